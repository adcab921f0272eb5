"""Every fast-path switch vs the plain fp32 path on a device: losses of a few steps; prints JSON lines.

    python scripts/check_fast_path.py [--device cuda]

The test suite checks the same on the CPU (tests/test_fast_path.py); this is the check to run on a
GPU machine: channels_last, resident data, bf16 autocast, torch.compile (inductor) and all of them
as `auto` picks them, each against the plain path, plus which equilibrium gate the trainer used.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SWITCHES = {
    "channels_last": ["trainer.channels_last=true"],
    "data_on_device": ["trainer.data_on_device=true"],
    "bf16": ["trainer.precision=bf16-mixed"],
    "compile": ["trainer.compile=true"],
    "cuda_graphs": ["trainer.cuda_graphs=true"],
    "compile_loss_graphs": ["trainer.compile=true", "trainer.compile_parts=[loss]", "trainer.cuda_graphs=true"],
    "all_auto": ["trainer.channels_last=auto", "trainer.data_on_device=auto", "trainer.precision=auto",
                 "trainer.compile=auto", "trainer.cuda_graphs=auto"],
    "vae_all_auto": ["model=seed_vae", "loss=vae", "trainer.channels_last=auto", "trainer.data_on_device=auto",
                     "trainer.precision=auto", "trainer.compile=auto", "trainer.cuda_graphs=auto"],
}


def run(device: str, switch: list[str], steps: int = 7) -> tuple[list[dict[str, float]], dict]:
    from tests.conftest import compose_config, tiny_overrides

    from facegen.trainer import Trainer

    plain = ["trainer.channels_last=false", "trainer.data_on_device=false", "trainer.precision=32",
             "trainer.compile=false", "trainer.cuda_graphs=false", f"trainer.device={device}", "data.num_images=512", "data.batch_size=64"]
    with tempfile.TemporaryDirectory() as d:
        tr = Trainer(compose_config("train", tiny_overrides(*plain, *switch), output_dir=Path(d)))
        out = []
        for idx in tr.data.train_batches(0)[:steps]:
            out.append({k: float(v.detach()) for k, v in tr.train_step(tr._batch(idx)).items()})
        info = {"gate_on_device": tr._gate_on_device, "compiled": tr.compiled, "amp": str(tr.amp_dtype),
                "cuda_graph_captured": tr._graph is not None}
        tr.close()
    return out, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--switch", action="append", choices=sorted(SWITCHES), help="check only these (repeatable)")
    args = parser.parse_args()
    import torch

    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    print(json.dumps({"device": name, "torch": torch.__version__}), flush=True)
    base, _ = run(args.device, [])
    base_vae, _ = run(args.device, ["model=seed_vae", "loss=vae"])
    for key, switch in SWITCHES.items():
        if args.switch and key not in args.switch:
            continue
        t = time.perf_counter()
        try:
            fast, info = run(args.device, switch)
            ref = base_vae if "loss=vae" in switch else base
            worst = max(abs(b[k] - a[k]) / max(abs(a[k]), 1e-3)
                        for a, b in zip(ref, fast) for k in a if k.startswith("loss/"))
            res = {"max_rel_diff": worst, **info, "seconds": round(time.perf_counter() - t, 1)}
        except Exception:  # report and go on: one broken switch must not hide the others
            res = {"error": traceback.format_exc()[-1500:]}
        print(json.dumps({key: res}), flush=True)


if __name__ == "__main__":
    main()
