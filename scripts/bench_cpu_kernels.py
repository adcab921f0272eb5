"""Time facegen's CPU kernels (facegen/models/cpu_kernels.py) and its resize-conv against PyTorch's layers; prints JSON.

    python scripts/bench_cpu_kernels.py [--threads 2] [--batch 100] [--repeats 10]

Per layer (or batch norm + activation pair) of the seed decoder and the default (dcgan) decoder
that the kernels can replace, and the resize-convs of experiment=fer_vaegan's decoder (nearest 2x
then a 3x3 conv, which facegen computes on the small image on every device: blocks.resize_conv):
forward plus backward milliseconds for a channels_last batch, best of --repeats, PyTorch's layer and
facegen's in alternation so both see the same machine load.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import time

import torch
import torch.nn as nn

from facegen.models.blocks import Upsample2x
from facegen.models.cpu_kernels import use_cpu_kernels


def _bn_act(channels: int, act: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(channels), act)


LAYERS = {
    "seed decoder ConvTranspose2d 64->64 k3, 6->12 px": (lambda: nn.ConvTranspose2d(64, 64, 3, 2, 1, 1), (64, 6)),
    "seed decoder ConvTranspose2d 64->64 k3, 12->24 px": (lambda: nn.ConvTranspose2d(64, 64, 3, 2, 1, 1), (64, 12)),
    "seed decoder ConvTranspose2d 64->32 k3, 24->48 px": (lambda: nn.ConvTranspose2d(64, 32, 3, 2, 1, 1), (64, 24)),
    "seed decoder final Conv2d 32->1 k3, 48 px": (lambda: nn.Conv2d(32, 1, 3, padding=1), (32, 48)),
    "dcgan decoder ConvTranspose2d 64->32 k4, 24->48 px": (lambda: nn.ConvTranspose2d(64, 32, 4, 2, 1, bias=False), (64, 24)),
    "seed decoder BatchNorm2d + LeakyReLU, 32 ch, 48 px": (lambda: _bn_act(32, nn.LeakyReLU(0.01)), (32, 48)),
    "seed decoder BatchNorm2d + LeakyReLU, 64 ch, 24 px": (lambda: _bn_act(64, nn.LeakyReLU(0.01)), (64, 24)),
    "dcgan decoder BatchNorm2d + ReLU, 32 ch, 48 px": (lambda: _bn_act(32, nn.ReLU()), (32, 48)),
    "fer_vaegan decoder resize-conv 64->64 k3, 12->24 px": (lambda: Upsample2x(64, 64, "resize", 3), (64, 12)),
    "fer_vaegan decoder resize-conv 64->16 k3, 24->48 px": (lambda: Upsample2x(64, 16, "resize", 3), (64, 24)),
}


def _pytorch_and_facegen(make) -> tuple[nn.Module, nn.Module]:
    """PyTorch's layer and facegen's version of it, with the same weights."""
    layer = make().to(memory_format=torch.channels_last)
    if isinstance(layer, Upsample2x):   # facegen's forward vs the plain nn.Upsample + nn.Conv2d it holds
        return layer.body, layer
    fast = copy.deepcopy(layer)
    use_cpu_kernels(fast)
    return layer, fast


def _forward_backward(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor):
    def run() -> None:
        layer.zero_grad(set_to_none=True)
        layer(x.detach().requires_grad_()).backward(grad)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = {"torch": torch.__version__, "threads": args.threads, "batch": args.batch,
           "cpu": platform.processor() or platform.machine(), "layers": {}}
    for name, (make, (channels, size)) in LAYERS.items():
        ref, fast = _pytorch_and_facegen(make)
        x = torch.randn(args.batch, channels, size, size).contiguous(memory_format=torch.channels_last)
        grad = torch.randn_like(ref(x))
        runs = {"pytorch": _forward_backward(ref, x, grad), "facegen": _forward_backward(fast, x, grad)}
        best = {k: float("inf") for k in runs}
        for _ in range(2):                       # warm-up
            for run in runs.values():
                run()
        for _ in range(args.repeats):
            for k, run in runs.items():
                start = time.perf_counter()
                run()
                best[k] = min(best[k], time.perf_counter() - start)
        out["layers"][name] = {"pytorch_ms": round(best["pytorch"] * 1e3, 2),
                               "facegen_ms": round(best["facegen"] * 1e3, 2),
                               "speedup": round(best["pytorch"] / best["facegen"], 2)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
