"""Where a training step's time goes: kernels per step, device time per step, the top kernels; one JSON object.

    python scripts/profile_step.py [--device cuda] [--steps 5] [OVERRIDE ...]

The step is run op by op (no CUDA graph: a replay hides its kernels from the profiler), after a
warm-up, under torch.profiler; `wall_ms_per_step` is the same step timed without the profiler. On
a GPU, a step whose device time is far below its wall time waits on the host launching kernels
(what `trainer.cuda_graphs` removes), and one whose kernel count is high but device time low gains
from fusion (`trainer.compile`). For a browsable trace use `debug=profile` in a training run.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=5, help="profiled steps")
    parser.add_argument("--top", type=int, default=12, help="kernels listed, by total device time")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of train.yaml")
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    sys.path.insert(0, str(ROOT / "scripts"))
    from benchmark import _facegen_step  # the benchmark's trainer step, so both measure the same thing

    step, tr = _facegen_step(args.device, ["trainer.cuda_graphs=false", *args.overrides], None)
    cuda = tr.device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(tr.device)

    for _ in range(10 if tr.compiled else 3):
        step()
    sync()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    wall_ms = (time.perf_counter() - t) * 1000 / args.steps

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step()
        sync()
    per_kernel: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    if cuda:  # device-side kernels (and memcpy/memset), from the trace's device events
        for ev in prof.events():
            # (user annotations such as Optimizer.step span kernels counted here already)
            if ev.device_type == torch.autograd.DeviceType.CUDA and not getattr(ev, "is_user_annotation", False):
                per_kernel[ev.name][0] += 1
                per_kernel[ev.name][1] += ev.device_time / 1000
    else:  # the CPU: every operator call, with its self time (what kernels and their time are there)
        for ev in prof.events():
            if ev.name.startswith("aten::"):
                per_kernel[ev.name][0] += 1
                per_kernel[ev.name][1] += ev.self_cpu_time_total / 1000
    kernels = sum(c for c, _ in per_kernel.values()) / args.steps
    device_ms = sum(ms for _, ms in per_kernel.values()) / args.steps
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1][1])[: args.top]
    print(json.dumps({
        "device": torch.cuda.get_device_name(tr.device) if cuda else "cpu", "torch": torch.__version__,
        "overrides": args.overrides, "batch_size": tr.data.batch_size, "compiled": tr.compiled,
        "precision": str(tr.amp_dtype or "float32"), "channels_last": tr.channels_last,
        "wall_ms_per_step": round(wall_ms, 3), "kernels_per_step": round(kernels, 1),
        "device_ms_per_step": round(device_ms, 3),
        "top": [{"name": n[:90], "per_step": round(c / args.steps, 1), "ms_per_step": round(ms / args.steps, 4)}
                for n, (c, ms) in top],
    }, indent=1))
    tr.close()


if __name__ == "__main__":
    main()
