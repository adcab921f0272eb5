"""Small building blocks shared by the network families."""
from __future__ import annotations

import torch
from torch import nn


def check_size(image_size: int, stages: int, who: str) -> int:
    """The spatial size after `stages` halvings; refuses sizes that do not divide evenly."""
    s = image_size // 2**stages
    if s < 1 or s * 2**stages != image_size:
        raise ValueError(f"{who}: image_size {image_size} is not divisible by 2**{stages}; "
                         f"use 48 or 64 (data.image_size) or change the number of widths")
    return s


class Upsample2x(nn.Module):
    """Doubles the resolution without checkerboard artifacts.

    `transpose` uses a 4x4 stride-2 transposed conv (kernel divisible by the stride, so every output
    pixel gets the same number of contributions); `resize` is nearest-neighbour resize then a conv.
    """

    def __init__(self, cin: int, cout: int, mode: str = "transpose", kernel_size: int = 5) -> None:
        super().__init__()
        if mode == "transpose":
            self.body = nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False)
        elif mode == "resize":
            self.body = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                      nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2, bias=False))
        else:
            raise ValueError(f"upsample must be 'transpose' or 'resize', got {mode!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class PreActResBlock(nn.Module):
    """Pre-activation residual block (He et al. 2016) that can halve or double the resolution."""

    def __init__(self, cin: int, cout: int, resample: str | None = None, norm: bool = True,
                 spectral: bool = False) -> None:
        super().__init__()
        sn = nn.utils.spectral_norm if spectral else (lambda m: m)
        self.resample = resample
        self.norm1 = nn.BatchNorm2d(cin) if norm else nn.Identity()
        self.conv1 = sn(nn.Conv2d(cin, cout, 3, padding=1))
        self.norm2 = nn.BatchNorm2d(cout) if norm else nn.Identity()
        self.conv2 = sn(nn.Conv2d(cout, cout, 3, padding=1))
        self.act = nn.ReLU() if norm else nn.LeakyReLU(0.2)
        self.skip = sn(nn.Conv2d(cin, cout, 1)) if cin != cout else nn.Identity()

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "up":
            return nn.functional.interpolate(x, scale_factor=2, mode="nearest")
        if self.resample == "down":
            return nn.functional.avg_pool2d(x, 2)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norm1(x))
        if self.resample == "up":
            h = self._resample(h)
        h = self.conv1(h)
        h = self.conv2(self.act(self.norm2(h)))
        if self.resample == "down":
            h = self._resample(h)
        return h + self._resample(self.skip(x))
