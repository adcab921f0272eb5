"""Small building blocks shared by the network families."""
from __future__ import annotations

import functools

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
    `resize`: nearest-neighbour resize then a conv (no grid by construction, more compute). With an
    odd kernel it is computed without the resized tensor (:func:`resize_conv`, the same numbers).
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
            if kernel_size % 2 == 1:  # resize_conv's tap sums, moved with the module (no host copy in a step)
                self.register_buffer("phase_rows", _resize_phase_rows(kernel_size)[0].clone(), persistent=False)
        else:
            raise ValueError(f"upsample must be 'transpose', 'transpose_blur' or 'resize', got {mode!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "phase_rows"):
            return resize_conv(x, self.body[1].weight, self.body[1].bias, self.phase_rows)
        return self.body(x)


@functools.lru_cache(maxsize=None)
def _resize_phase_rows(k: int) -> tuple[torch.Tensor, int, tuple[int, int]]:
    """For :func:`resize_conv`: how a k-tap kernel (k odd) after a 2x nearest-neighbour resize acts on
    the small image. Output row 2i+a (a = 0, 1) reads rows floor((2i+a+t)/2) = i + floor((a+t)/2) of
    the small image for taps t = -r..r (r = k // 2): r+1 distinct rows, so each output phase is an
    (r+1)-tap kernel whose taps are sums of the original ones. Returns the [2 phases, r+1, k] 0/1
    matrices that sum the taps (cached: clone before keeping), the padding of the small conv, and where
    each phase's rows start."""
    r = k // 2
    pad = (r + 1) // 2
    rows = torch.zeros(2, r + 1, k)
    firsts = [(a - r) // 2 for a in (0, 1)]
    for a in (0, 1):
        for t in range(k):
            rows[a, (a + t - r) // 2 - firsts[a], t] = 1.0
    return rows, pad, (firsts[0] + pad, firsts[1] + pad)


def resize_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                phase_rows: torch.Tensor | None = None) -> torch.Tensor:
    """``conv2d(interpolate(x, scale_factor=2, mode="nearest"), weight, bias, padding=k // 2)`` for an
    odd square kernel, computed on the small image: one conv with the four output phases' summed
    kernels (4 * out channels, (k//2 + 1)^2 taps), then the phases interleaved. The same numbers up
    to float rounding, and 2.25x fewer multiply-adds for k = 3 (2.8x for 5), with no 4x-sized resized
    tensor to write and read back: the decoder's resize-convs took over half of a training step of
    experiment=fer_vaegan on the CPU (docs/recipe.md). Gradients reach ``weight`` through the sums.
    ``phase_rows``: the stacked tap-summing matrices on ``weight``'s device (made here when None).
    """
    cout, _, k, _ = weight.shape
    rows, pad, starts = _resize_phase_rows(k)
    rows = (rows if phase_rows is None else phase_rows).to(weight)         # [2 phases, r+1, k]
    kernels = torch.einsum("apk,oikl,bql->aboipq", rows, weight, rows)     # [2, 2, cout, cin, r+1, r+1]
    out = F.conv2d(x, kernels.reshape(4 * cout, *kernels.shape[3:]),
                   None if bias is None else bias.repeat(4), padding=pad)
    return _InterleavePhases.apply(out, starts, x.shape[-2], x.shape[-1])


class _InterleavePhases(torch.autograd.Function):
    """[n, 4 * c, H', W'] phase-major conv outputs -> [n, c, 2h, 2w]: phase (a, b)'s rows starts[a] ..
    starts[a] + h and columns starts[b] .. + w become output pixels (2i+a, 2j+b). One copy each way; with
    autograd's slicing instead, the backward filled and summed a zero tensor per phase and per view
    (a tenth of the step)."""

    @staticmethod
    def forward(ctx, out: torch.Tensor, starts: tuple[int, int], h: int, w: int) -> torch.Tensor:
        n, c4, hh, ww = out.shape
        c = c4 // 4
        ctx.shape, ctx.starts, ctx.hw = out.shape, starts, (h, w)
        ctx.channels_last = out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
        phases = out.view(n, 2, 2, c, hh, ww)
        # allocated as [n, h, 2, w, 2, c] and permuted: the result is channels_last like the conv's output
        res = out.new_empty(n, h, 2, w, 2, c).permute(0, 5, 1, 2, 3, 4) if ctx.channels_last else \
            out.new_empty(n, c, h, 2, w, 2)
        for a in (0, 1):
            for b in (0, 1):
                res[:, :, :, a, :, b] = phases[:, a, b, :, starts[a]:starts[a] + h, starts[b]:starts[b] + w]
        return res.reshape(n, c, 2 * h, 2 * w)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        n, c4, hh, ww = ctx.shape
        (h, w), starts, c = ctx.hw, ctx.starts, c4 // 4
        fmt = torch.channels_last if ctx.channels_last else torch.contiguous_format
        g_out = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device, memory_format=fmt).zero_()
        phases = g_out.view(n, 2, 2, c, hh, ww)
        g = grad.reshape(n, c, h, 2, w, 2)
        for a in (0, 1):
            for b in (0, 1):
                phases[:, a, b, :, starts[a]:starts[a] + h, starts[b]:starts[b] + w] = g[:, :, :, a, :, b]
        return g_out, None, None, None


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
