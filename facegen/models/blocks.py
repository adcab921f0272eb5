"""Small building blocks shared by the network families."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def check_size(image_size: int, stages: int, who: str) -> int:
    """The spatial size after `stages` halvings; refuses sizes that do not divide evenly."""
    s = image_size // 2**stages
    if s < 1 or s * 2**stages != image_size:
        raise ValueError(f"{who}: image_size {image_size} is not divisible by 2**{stages}; "
                         f"use 48 or 64 (data.image_size) or change the number of widths")
    return s


class Blur(nn.Module):
    """A fixed [1, 2, 1] x [1, 2, 1] / 16 low-pass filter per channel (same size out): it removes the
    period-2 pattern (the Nyquist frequency) completely and halves a period-4 one."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("kernel", (k[:, None] * k[None, :] / 16).expand(channels, 1, 3, 3).clone(),
                             persistent=False)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (1, 1, 1, 1), mode="replicate")
        return F.conv2d(x, self.kernel.to(x.dtype), groups=self.channels)


class MinibatchStd(nn.Module):
    """Appends one channel: how much the images of a small group differ (Karras et al. 2018, ProGAN).

    The features' standard deviation over each group of `group_size` consecutive images, averaged
    over channels and pixels, as a constant map. A discriminator that sees single images cannot
    tell that many generated ones are the same pattern (partial mode collapse); with this channel it
    can. Not in torch or torchvision. Groups are consecutive, so a batch made of equal blocks (real,
    reconstructed, prior) keeps its kinds apart when the group size divides the block size; the
    group is the largest divisor of the batch that is at most `group_size`.
    """

    def __init__(self, group_size: int = 4) -> None:
        super().__init__()
        if int(group_size) < 2:
            raise ValueError(f"minibatch std group_size={group_size}: needs at least 2 images per group")
        self.group_size = int(group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = next(d for d in range(min(self.group_size, n), 0, -1) if n % d == 0)
        if g == 1:                       # a single image (or a prime-sized batch): no spread to measure
            return torch.cat([x, x.new_zeros(n, 1, h, w)], dim=1)
        y = x.float().reshape(n // g, g, c, h, w)
        std = (y.var(dim=1, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))   # one value per group
        stat = std.repeat_interleave(g).to(x.dtype).reshape(n, 1, 1, 1).expand(n, 1, h, w)
        return torch.cat([x, stat], dim=1)


class Upsample2x(nn.Module):
    """Doubles the resolution.

    `transpose`: a 4x4 stride-2 transposed conv (kernel divisible by the stride, so every output
    pixel gets the same number of contributions; learned weights can still differ between the four
    output phases, and a GAN term brings that out as a fine grid). `transpose_blur`: the same, then
    a fixed [1, 2, 1] low-pass filter, as StyleGAN's upsampling does: no period-2 grid can pass it.
    `resize`: nearest-neighbour resize then a conv (no grid by construction, more compute).
    """

    def __init__(self, cin: int, cout: int, mode: str = "transpose", kernel_size: int = 5) -> None:
        super().__init__()
        if mode in ("transpose", "transpose_blur"):
            self.body = nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False)
            if mode == "transpose_blur":
                self.body = nn.Sequential(self.body, Blur(cout))
        elif mode == "resize":
            self.body = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                      nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2, bias=False))
        else:
            raise ValueError(f"upsample must be 'transpose', 'transpose_blur' or 'resize', got {mode!r}")

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
