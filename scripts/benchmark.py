"""Measure facegen against the seed project's pipeline, side by side in one run; prints one JSON object.

    python scripts/benchmark.py [--device cpu|cuda] [--quick] [--fer DIR] [--out FILE]
                                [--variant NAME:OVERRIDE,OVERRIDE ...]

- data: the seed's pandas `apply(split)` CSV parse vs facegen's cold parse vs its cached load
  (scripts/benchmark_data.py), and the FER2013 folder read cold and cached;
- training throughput (images/s after warm-up, median of several windows) of the same model
  (`seed_vae`, `loss=vae`, Adam, batch 100): a faithful replica of the seed's pipeline (pandas
  per-item Dataset + DataLoader, float32) vs facegen's trainer with its fast path; and the default
  VAE-GAN preset at its default batch size. Each runs in a fresh process, so peak memory is its own;
  then the seed pipeline, facegen, and facegen without its CPU kernels once more in one process,
  timing windows in turn (``seed_vae_same_process``: the fairest ratio on a noisy machine).
- ``--variant NAME:OVERRIDES`` adds runs of the VAE-GAN with other settings (comma-separated Hydra
  overrides; commas inside [...] stay in their list), e.g. ``--variant b1024:data.batch_size=1024 --variant
  eager:trainer.compile=false --variant enc:trainer.compile_parts=[encoder,decoder]``.
- ``--out FILE`` also writes the JSON there after every stage, so a run cut short keeps what it measured.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
#: facegen's overrides for the seed's model and recipe (seed_vae, its ELBO, Adam 1e-3 with default betas)
SEED_RECIPE = ["model=seed_vae", "loss=vae", "optimizer.lr=1e-3", "optimizer.betas=[0.9,0.999]"]


def _windows(step, warmup: int, windows: int, steps_per_window: int, batch: int, sync) -> dict:
    """Images/s of `step()` over timed windows after warm-up: the median and all windows."""
    for _ in range(warmup):
        step()
    sync()
    rates = []
    for _ in range(windows):
        t = time.perf_counter()
        for _ in range(steps_per_window):
            step()
        sync()
        rates.append(batch * steps_per_window / (time.perf_counter() - t))
    return {"img_per_s": round(statistics.median(rates), 1), "windows": [round(r, 1) for r in rates]}


def _peak_memory_mb(device) -> dict:
    import torch

    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.type == "cuda":
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def _seed_step(device_name: str, csv_path: str):
    """The seed project's training step, restated: pandas apply(split), iloc per item, float32."""
    import numpy as np
    import pandas as pd
    import torch
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    from facegen.data.synthetic import draw_faces  # noqa: F401  (import cost paid by both sides)
    from facegen.models.decoders import SeedDecoder
    from facegen.models.encoders import SeedEncoder

    device = torch.device(device_name)
    df = pd.read_csv(csv_path)
    df["pixels"] = df["pixels"].apply(lambda s: np.array(s.split(), dtype="float32"))

    class SeedDataset(Dataset):  # the seed's: one row at a time through iloc
        def __init__(self, frame):
            self.frame = frame
            self.to_tensor = transforms.ToTensor()

        def __len__(self):
            return len(self.frame)

        def __getitem__(self, i):
            img = self.frame.iloc[i]["pixels"].reshape(48, 48) / 255.0
            return self.to_tensor(img.astype("float32"))

    loader = DataLoader(SeedDataset(df), batch_size=100, shuffle=True, drop_last=True)
    enc, dec = SeedEncoder().to(device), SeedDecoder().to(device)
    opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=1e-3)
    it = iter(loader)

    def step():
        nonlocal it
        try:
            x = next(it)
        except StopIteration:
            it = iter(loader)
            x = next(it)
        x = x.to(device)
        mu, logvar = enc(x)
        recon = dec(mu + torch.randn_like(mu) * torch.exp(0.5 * logvar))
        bce = torch.nn.functional.binary_cross_entropy(recon, x, reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        loss = (bce + kld) / x.shape[0]
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def _sync(device_name: str):
    import torch

    return torch.cuda.synchronize if device_name.startswith("cuda") else (lambda: None)


def worker_seed_pipeline(device_name: str, csv_path: str, quick: bool) -> dict:
    import torch

    res = _windows(_seed_step(device_name, csv_path), 5, 3 if quick else 5, 10 if quick else 30, 100,
                   _sync(device_name))
    return {**res, **_peak_memory_mb(torch.device(device_name))}


def _facegen_step(device_name: str, overrides: list[str], batch: int | None):
    """facegen's own trainer step, on its fast path (resident uint8 data, channels_last, ...)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    over = [f"trainer.device={device_name}", "trainer.progress_bar=false", "logger=none",
            "data.num_images=4000", *overrides]
    if batch:
        over.append(f"data.batch_size={batch}")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", over)
    with open_dict(cfg):
        cfg.paths.output_dir = "/tmp/facegen-bench"
    from facegen.trainer import Trainer

    tr = Trainer(cfg)
    batches = tr.data.train_batches(0)
    state = {"i": 0}

    def step():
        idx = batches[state["i"] % (len(batches) - 1)]  # full batches only
        state["i"] += 1
        tr._accumulate(tr.train_step(tr._batch(idx)))
        tr.step += 1

    return step, tr


def worker_facegen(device_name: str, overrides: list[str], quick: bool, batch: int | None) -> dict:
    import torch

    step, tr = _facegen_step(device_name, overrides, batch)
    bs = tr.data.batch_size
    res = _windows(step, 10 if tr.compiled else 5, 3 if quick else 5, 10 if quick else 30, bs, _sync(device_name))
    return {**res, "batch_size": bs, "channels_last": tr.channels_last, "cpu_kernels": tr.cpu_kernels,
            "compiled": tr.compiled, "precision": str(tr.amp_dtype or "float32"),
            **_peak_memory_mb(torch.device(device_name))}


def worker_same_process(device_name: str, csv_path: str, quick: bool) -> dict:
    """seed_vae two ways (three on the CPU) in one process, their timing windows taken in turn, so that
    all see the same machine load (a shared or thermally busy CPU drifts by more than the differences)."""
    steps = {"seed_pipeline": _seed_step(device_name, csv_path),
             "facegen": _facegen_step(device_name, SEED_RECIPE, 100)[0]}
    if device_name == "cpu":  # the CPU kernels are for the CPU only
        steps["facegen_without_cpu_kernels"] = _facegen_step(
            device_name, [*SEED_RECIPE, "trainer.cpu_kernels=false"], 100)[0]
    sync = _sync(device_name)
    for step in steps.values():
        for _ in range(5):
            step()
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(4 if quick else 8):
        for name, step in steps.items():
            rates[name].append(_windows(step, 0, 1, 50 if device_name == "cuda" else 10, 100, sync)["img_per_s"])
    out = {name: {"img_per_s": round(statistics.median(r), 1), "windows": r} for name, r in rates.items()}
    base = out["seed_pipeline"]["img_per_s"]
    for name in steps.keys() - {"seed_pipeline"}:
        out[f"speedup_{name}"] = round(out[name]["img_per_s"] / base, 2)
    return out


def _run_worker(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines()
        # Hydra ends with its config search path: keep the line that says what went wrong, and the tail
        said = [s for s in lines if s.lstrip().lower().startswith(("error", "could not", "key '")) or "Error:" in s]
        return {"error": "\n".join(dict.fromkeys(said[:3] + lines[-6:])) or "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="smaller files and fewer timing windows")
    parser.add_argument("--skip-data", action="store_true", help="training throughput only")
    parser.add_argument("--fer", type=Path, default=None, help="the fer2013 folder (train/, validation/) "
                        "the benchmark CSV is built from (default: ../shared/data/fer2013)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here after every stage")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:OVERRIDES",
                        help="an extra VAE-GAN run with comma-separated overrides (repeatable)")
    parser.add_argument("--variants-only", action="store_true", help="measure the --variant runs alone")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == "cuda" and not args.worker:
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA GPU is visible to torch here; use --device cpu")

    if args.worker:
        kind, *rest = args.worker
        quick = args.quick
        if kind == "seed":
            print(json.dumps(worker_seed_pipeline(args.device, rest[0], quick)))
        elif kind == "same_process":
            print(json.dumps(worker_same_process(args.device, rest[0], quick)))
        else:
            batch = 100 if kind == "facegen_seed" else None
            print(json.dumps(worker_facegen(args.device, rest, quick, batch)))
        return

    import torch

    from benchmark_data import DEFAULT_FER, benchmark_data

    result: dict = {
        "machine": {
            "device": args.device,
            "device_name": torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "load_average": os.getloadavg(),
        },
    }
    fer = args.fer or DEFAULT_FER

    def emit() -> None:
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2))

    if not args.skip_data:
        result["data"] = benchmark_data(quick=args.quick, fer=fer)
        emit()
    flags = ["--quick"] if args.quick else []
    dev = ["--device", args.device]
    training = result["training"] = {}
    if not args.variants_only:
        measure_standard_rows(training, fer, args, flags, dev, emit)
    for variant in args.variant:
        name, _, overrides = variant.partition(":")
        over = [o for o in re.split(r",(?![^\[]*\])", overrides) if o]  # a comma inside [...] is the list's
        res = _run_worker([*dev, *flags, "--worker", "facegen_vaegan", *over])
        training[f"facegen_vaegan_{name}"] = {"overrides": overrides, **res}
        emit()
    print(json.dumps(result, indent=2))


def measure_standard_rows(training: dict, fer: Path, args, flags: list[str], dev: list[str], emit) -> None:
    """The seed pipeline vs facegen on seed_vae (separate processes and one process), the default VAE-GAN."""
    from benchmark_data import BENCH_DIR, build_age_gender_csv

    csv_path = build_age_gender_csv(fer, 2000 if args.quick else 23705, BENCH_DIR)
    seed = training["seed_pipeline_seed_vae_batch100"] = _run_worker([*dev, *flags, "--worker", "seed", str(csv_path)])
    emit()
    fast = training["facegen_seed_vae_batch100"] = _run_worker(
        [*dev, *flags, "--worker", "facegen_seed", *SEED_RECIPE])
    if "img_per_s" in seed and "img_per_s" in fast:
        training["speedup_seed_vae"] = round(fast["img_per_s"] / seed["img_per_s"], 2)
    emit()
    training["facegen_default_vaegan"] = _run_worker([*dev, *flags, "--worker", "facegen_vaegan"])
    emit()
    training["seed_vae_same_process"] = _run_worker([*dev, *flags, "--worker", "same_process", str(csv_path)])
    emit()


if __name__ == "__main__":
    main()
