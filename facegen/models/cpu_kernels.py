"""Faster CPU training for three layer kinds PyTorch handles poorly there, with the same parameters and numbers.

Measured on the reference CPU (2 cores of an AMD EPYC, AVX2), batch 100, channels_last;
``scripts/bench_cpu_kernels.py`` times each layer both ways (JSON):

- ``nn.ConvTranspose2d``: autograd computes a transposed convolution's weight gradient on a slow
  oneDNN path. That gradient is also the weight gradient of the ordinary convolution
  ``conv2d(grad_out, weight, stride, padding)``, whose output has the transposed layer's input shape
  and whose weight has the same (in, out, kh, kw) layout, and oneDNN computes that one fast; the
  input gradient is the same ordinary convolution. Forward and backward of the seed decoder's
  64->32 layer (24->48 px): 69.2 -> 52.3 ms. (The dcgan decoder's 4x4 kernels are not on the slow
  path: 75 ms either way.)
- ``nn.Conv2d`` to one channel, 3x3, stride 1 (the seed decoder's last layer): its backward keeps the
  vector units idle. Two numba kernels instead, row-parallel: the forward sums each output pixel's
  nine taps over the channels; the backward visits each input pixel once and adds its nine taps'
  shares to both its input gradient and the weight gradient (partial sums per block of rows).
  Forward and backward of the 32->1 layer at 48 px: 24.2 (PyTorch) -> 14.1 ms (the matrix-product
  version before it: 26.5 against 18.0 for these kernels, measured side by side).
- ``nn.BatchNorm2d`` followed by ``nn.LeakyReLU``/``nn.ReLU`` in an ``nn.Sequential`` (every block of
  the seed and dcgan networks), in training mode: ATen runs batch norm and the activation as separate
  kernels, each with its own passes over the activations forward and backward, and, channels_last,
  sums the batch statistics in float32 (its input gradient at batch 100, 32 channels, 48 px differs
  from a float64 computation by up to 20% of its largest entry). Two numba kernels each way fuse
  the normalisation with the activation and sum in float32 blocks of 256 rows, then float64; the
  backward reads the input and the output gradient only. Forward and backward at batch 100, 32
  channels, 48 px: 17.9 -> 10.7 ms.

:func:`use_cpu_kernels` switches a module's eligible layers (their class changes, their parameters
and state_dict keys do not); inference, autocast, CUDA and every other layer keep PyTorch's own
kernels. ``tests/test_fast_path.py`` checks outputs and gradients against PyTorch's layers. The numba
kernels (float32, channels_last) compile on first use, ~15 s, and are cached on disk.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from functools import lru_cache

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger(__name__)


class _ConvTranspose2dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, output_padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation, bias is not None)
        return F.conv_transpose2d(x, weight, bias, stride, padding, output_padding, 1, dilation)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, has_bias = ctx.conf
        grad_out = grad_out.contiguous(memory_format=torch.channels_last) \
            if x.is_contiguous(memory_format=torch.channels_last) else grad_out.contiguous()
        grad_x = grad_w = grad_b = None
        # the adjoint of a transposed convolution is the ordinary one, conv2d(grad_out, weight): it is
        # the input gradient, and its weight gradient (with x as its output gradient) is this layer's
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad_out, weight, None, stride, padding, dilation)
        if ctx.needs_input_grad[1]:
            grad_w = torch.ops.aten.convolution_backward(
                x, grad_out, weight, None, stride, padding, dilation, False, [0, 0], 1, [False, True, False])[1]
        if has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None, None


class CPUConvTranspose2d(nn.ConvTranspose2d):
    """nn.ConvTranspose2d with the weight gradient computed as an ordinary convolution's (on the CPU)."""

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        if (x.device.type != "cpu" or x.dim() != 4 or output_size is not None or not torch.is_grad_enabled()
                or torch.is_autocast_enabled("cpu")):     # bf16 autocast: PyTorch's path casts for us
            return super().forward(x, output_size)
        return _ConvTranspose2dFn.apply(x, self.weight, self.bias, self.stride, self.padding,
                                        self.output_padding, self.dilation)


def _one_channel_3x3(m: nn.Conv2d) -> bool:
    # measured faster than oneDNN for 3x3 kernels only (5x5: 25 shifted planes cost more than they save)
    return (m.out_channels == 1 and m.groups == 1 and m.kernel_size == (3, 3) and m.stride == (1, 1)
            and m.dilation == (1, 1) and m.padding == (1, 1) and m.padding_mode == "zeros")


# -- numba kernels ----------------------------------------------------------------------------------
# Plain Python here, compiled by numba on first use (_kernels). The batch-norm kernels see the
# channels_last activations as [rows = N*H*W, C], each prange iteration one block of _BLOCK rows;
# the one-channel convolution's see [N, H, W, C], each iteration one image row.
_BLOCK = 256


def _conv1_fwd(x, w, b, y):  # pragma: no cover - compiled by numba
    n, h, wd, c = x.shape
    for t in _prange(n * h):
        k, r = t // h, t % h
        for s in range(wd):
            acc = b
            for i in range(3):
                rr = r + i - 1
                if rr < 0 or rr >= h:
                    continue
                for j in range(3):
                    ss = s + j - 1
                    if ss < 0 or ss >= wd:
                        continue
                    for q in range(c):
                        acc += x[k, rr, ss, q] * w[i * 3 + j, q]
            y[k, r, s] = acc


def _conv1_bwd(g, x, w, dx, gw):  # pragma: no cover - compiled by numba
    n, h, wd, c = x.shape
    nb = gw.shape[0]
    per = (n * h + nb - 1) // nb
    for blk in _prange(nb):
        acc = np.zeros((9, c), np.float32)
        d = np.zeros(c, np.float32)
        for t in range(blk * per, min(n * h, (blk + 1) * per)):
            k, a = t // h, t % h
            for bb in range(wd):
                d[:] = 0.0
                for i in range(3):       # input (a, bb) reached output (a - i + 1, bb - j + 1) through tap (i, j)
                    r = a - i + 1
                    if r < 0 or r >= h:
                        continue
                    for j in range(3):
                        s = bb - j + 1
                        if s < 0 or s >= wd:
                            continue
                        gv = g[k, r, s]
                        for q in range(c):
                            d[q] += gv * w[i * 3 + j, q]
                            acc[i * 3 + j, q] += gv * x[k, a, bb, q]
                dx[k, a, bb] = d
        gw[blk] = acc


def _bn_stats(x, s, ss):  # pragma: no cover - compiled by numba
    m, c = x.shape
    for t in _prange(s.shape[0]):
        a = np.zeros(c, np.float32)
        b = np.zeros(c, np.float32)
        for i in range(t * _BLOCK, min(m, (t + 1) * _BLOCK)):
            for j in range(c):
                v = x[i, j]
                a[j] += v
                b[j] += v * v
        s[t] = a
        ss[t] = b


def _bn_act(x, scale, shift, slope, y):  # pragma: no cover - compiled by numba
    m, c = x.shape
    for t in _prange((m + _BLOCK - 1) // _BLOCK):
        for i in range(t * _BLOCK, min(m, (t + 1) * _BLOCK)):
            for j in range(c):
                v = x[i, j] * scale[j] + shift[j]
                y[i, j] = v if v > 0 else v * slope


# The backward reads the input x and the output gradient g only (not the output y): where the
# activation was positive is recomputed from x with the forward's own scale and shift.
def _bn_act_grad_stats(g, x, scale, shift, mean, slope, s, sx):  # pragma: no cover - compiled by numba
    m, c = x.shape
    for t in _prange(s.shape[0]):
        a = np.zeros(c, np.float32)
        b = np.zeros(c, np.float32)
        for i in range(t * _BLOCK, min(m, (t + 1) * _BLOCK)):
            for j in range(c):
                gp = g[i, j] if x[i, j] * scale[j] + shift[j] > 0 else g[i, j] * slope
                a[j] += gp
                b[j] += gp * (x[i, j] - mean[j])
        s[t] = a
        sx[t] = b


def _bn_act_grad(g, x, scale, shift, mean, slope, k1, k2, k3, dx):  # pragma: no cover - compiled by numba
    m, c = x.shape
    for t in _prange((m + _BLOCK - 1) // _BLOCK):
        for i in range(t * _BLOCK, min(m, (t + 1) * _BLOCK)):
            for j in range(c):
                gp = g[i, j] if x[i, j] * scale[j] + shift[j] > 0 else g[i, j] * slope
                dx[i, j] = k1[j] * gp - k2[j] - (x[i, j] - mean[j]) * k3[j]


_prange = range  # numba.prange once compiled (plain range keeps the Python functions importable without numba)


@lru_cache(maxsize=1)
def _kernels() -> dict | None:
    """The kernels above compiled by numba (parallel) on first use, then cached on disk like the
    synthetic-face renderer's (facegen/data/synthetic.py); None where numba is not usable."""
    try:
        import numba
    except ImportError:  # numba is a core dependency; without it these layers keep PyTorch's kernels
        return None
    global _prange
    _prange = numba.prange
    fns = (_bn_stats, _bn_act, _bn_act_grad_stats, _bn_act_grad, _conv1_fwd, _conv1_bwd)
    options = dict(parallel=True, fastmath=True, boundscheck=False)
    try:
        return {f.__name__: numba.njit(cache=True, **options)(f) for f in fns}
    except RuntimeError as err:  # no writable cache dir: compile in every process
        log.warning("cpu_kernels: numba cannot cache its kernels (%s); they are compiled again in every "
                    "process. Set NUMBA_CACHE_DIR to a writable directory to cache them.", err)
        return {f.__name__: numba.njit(cache=False, **options)(f) for f in fns}


def warm_up() -> float:
    """Compile the numba kernels now (or load them from the disk cache), on a tiny batch, so that the
    first training step does not pay for it; returns the seconds taken (~1 s cached, 15-25 s on
    2 cores the first time). The global RNG state is left as it was."""
    if _kernels() is None:
        return 0.0
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1))
        use_cpu_kernels(net)
        net.to(memory_format=torch.channels_last)
        net(torch.randn(2, 2, 5, 5).contiguous(memory_format=torch.channels_last)).sum().backward()
    return time.perf_counter() - start


def _numba_ok(x: torch.Tensor) -> bool:
    """Whether x (a layer's input) takes the numba kernels: CPU, float32, batched, channels_last."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last) and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling() and _kernels() is not None)


def _rows(t: torch.Tensor) -> np.ndarray:
    """A channels_last [N, C, H, W] float32 tensor as a [N*H*W, C] numpy view (no copy)."""
    n, c, h, w = t.shape
    return t.detach().permute(0, 2, 3, 1).reshape(n * h * w, c).numpy()


def _block_sums(kernel, *args) -> tuple[np.ndarray, np.ndarray]:
    m, c = args[0].shape
    nb = (m + _BLOCK - 1) // _BLOCK
    a, b = np.empty((nb, c), np.float32), np.empty((nb, c), np.float32)
    kernel(*args, a, b)
    return a.sum(0, dtype=np.float64), b.sum(0, dtype=np.float64)


@contextmanager
def _numba_threads():
    """Run numba on as many threads as torch, and give torch its thread count back: numba's OpenMP
    layer sets the process's OpenMP thread count to NUMBA_NUM_THREADS (all cores) when it starts,
    which would silently turn a `trainer.num_threads=1` run into an all-cores one (two such runs side
    by side then fight over the cores: 3-4x slower, measured)."""
    import numba

    n = torch.get_num_threads()
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


class _BatchNormActFn(torch.autograd.Function):
    """Training-mode batch norm then a leaky ReLU (slope 0: ReLU) over channels_last float32 activations."""

    @staticmethod
    @_numba_threads()
    def forward(ctx, x, weight, bias, bn: "CPUBatchNormAct"):
        k = _kernels()
        xr = _rows(x)
        m, c = xr.shape
        s, ss = _block_sums(k["_bn_stats"], xr)
        mean = s / m
        var = np.maximum(ss / m - mean * mean, 0.0)
        rstd = 1.0 / np.sqrt(var + bn.eps)
        w = weight.detach().double().numpy() if weight is not None else np.ones(c)
        b = bias.detach().double().numpy() if bias is not None else np.zeros(c)
        bn._update_running_stats(torch.from_numpy(mean), torch.from_numpy(var * m / max(m - 1, 1)))
        y = torch.empty_like(x, memory_format=torch.channels_last)
        slope = np.float32(bn.act_slope)
        scale, shift = (w * rstd).astype(np.float32), (b - mean * w * rstd).astype(np.float32)
        k["_bn_act"](xr, scale, shift, slope, _rows(y))
        ctx.save_for_backward(x)
        ctx.consts = (scale, shift, mean.astype(np.float32), rstd, w, slope, weight is not None, bias is not None)
        return y

    @staticmethod
    @_numba_threads()
    def backward(ctx, grad_y):
        k = _kernels()
        x, = ctx.saved_tensors
        scale, shift, mean, rstd, w, slope, has_w, has_b = ctx.consts
        g = grad_y.contiguous(memory_format=torch.channels_last)
        gr, xr = _rows(g), _rows(x)
        m = xr.shape[0]
        # sums of the gradient after the activation, and of it times (x - mean)
        s, sx = _block_sums(k["_bn_act_grad_stats"], gr, xr, scale, shift, mean, slope)
        dx = torch.empty_like(x, memory_format=torch.channels_last)
        k1 = w * rstd
        k["_bn_act_grad"](gr, xr, scale, shift, mean, slope, k1.astype(np.float32), (k1 * s / m).astype(np.float32),
             (k1 * rstd * rstd * sx / m).astype(np.float32), _rows(dx))
        grad_w = torch.from_numpy(sx * rstd).float() if has_w and ctx.needs_input_grad[1] else None
        grad_b = torch.from_numpy(s).float() if has_b and ctx.needs_input_grad[2] else None
        return dx, grad_w, grad_b, None


class CPUBatchNormAct(nn.BatchNorm2d):
    """nn.BatchNorm2d that also applies the activation that followed it (now a `FusedActivation`):
    fused numba kernels when training on channels_last float32 CPU activations, PyTorch's otherwise."""

    act_slope: float = 0.0   # set by use_cpu_kernels: the leaky ReLU's negative slope, 0 for a ReLU

    def _update_running_stats(self, mean: torch.Tensor, var_unbiased: torch.Tensor) -> None:
        if not self.track_running_stats or self.running_mean is None:
            return
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            self.running_mean.mul_(1 - f).add_(mean.to(self.running_mean.dtype), alpha=f)
            self.running_var.mul_(1 - f).add_(var_unbiased.to(self.running_var.dtype), alpha=f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and _numba_ok(x) and x.shape[0] * x.shape[2] * x.shape[3] > 1:
            return _BatchNormActFn.apply(x, self.weight, self.bias, self)
        y = super().forward(x)
        return F.leaky_relu(y, self.act_slope) if self.act_slope else F.relu(y)


class FusedActivation(nn.Module):
    """Stands where a LeakyReLU/ReLU was once `CPUBatchNormAct` before it applies it: passes its input on."""

    def __init__(self, fused_from: str) -> None:
        super().__init__()
        self.fused_from = fused_from

    def extra_repr(self) -> str:
        return f"applied by the batch norm before it (was {self.fused_from})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _taps(weight: torch.Tensor) -> np.ndarray:
    """A one-channel 3x3 weight [1, C, 3, 3] as a contiguous [9, C] array (tap i * 3 + j)."""
    return weight.detach()[0].permute(1, 2, 0).reshape(9, -1).contiguous().numpy()


class _OneChannelConvFn(torch.autograd.Function):
    """conv2d(x, weight [1, C, 3, 3], bias, stride 1, padding 1) of channels_last float32 x, by numba."""

    @staticmethod
    @_numba_threads()
    def forward(ctx, x, weight, bias):
        k = _kernels()
        n, c, h, w = x.shape
        y = torch.empty(n, 1, h, w)
        b = np.float32(bias.detach().item()) if bias is not None else np.float32(0.0)
        k["_conv1_fwd"](x.detach().permute(0, 2, 3, 1).numpy(), _taps(weight), b, y.numpy()[:, 0])
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    @_numba_threads()
    def backward(ctx, grad_y):
        k = _kernels()
        x, weight = ctx.saved_tensors
        n, c, h, w = x.shape
        dx = torch.empty_like(x, memory_format=torch.channels_last)
        gw = np.empty((min(64, n * h), 9, c), np.float32)   # the weight gradient's partial sums, per block
        k["_conv1_bwd"](grad_y.contiguous()[:, 0].numpy(), x.detach().permute(0, 2, 3, 1).numpy(), _taps(weight),
                        dx.permute(0, 2, 3, 1).numpy(), gw)
        grad_w = torch.from_numpy(gw.sum(0, dtype=np.float64)).float().view(3, 3, c).permute(2, 0, 1)
        grad_b = grad_y.sum().view(1) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, grad_w.unsqueeze(0).contiguous(), grad_b


class CPUOneChannelConv2d(nn.Conv2d):
    """nn.Conv2d to one channel (3x3, stride 1, padding 1) by numba kernels when training on the CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and _numba_ok(x)):
            return super().forward(x)
        return _OneChannelConvFn.apply(x, self.weight, self.bias)


def _fuse_batchnorm_activations(module: nn.Module) -> int:
    fused = 0
    for seq in [m for m in module.modules() if type(m) is nn.Sequential]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            bn, act = seq._modules[a], seq._modules[b]
            if type(bn) is not nn.BatchNorm2d or type(act) not in (nn.LeakyReLU, nn.ReLU):
                continue
            bn.__class__ = CPUBatchNormAct
            bn.act_slope = float(act.negative_slope) if isinstance(act, nn.LeakyReLU) else 0.0
            seq._modules[b] = FusedActivation(repr(act))
            fused += 1
    return fused


def use_cpu_kernels(module: nn.Module) -> int:
    """Switch the eligible layers of ``module`` to the kernels above; returns how many were switched.

    Spectrally normalised layers (their weight is a computed attribute) are left alone. A fused batch
    norm counts once (its activation's place in the nn.Sequential takes a `FusedActivation`: the
    state_dict keys do not change, an activation has no parameters).
    """
    switched = _fuse_batchnorm_activations(module)
    for m in module.modules():
        if "weight" not in m._parameters:      # spectral_norm / parametrizations: leave as is
            continue
        if type(m) is nn.ConvTranspose2d and m.groups == 1 and m.padding_mode == "zeros":
            m.__class__ = CPUConvTranspose2d
            switched += 1
        elif type(m) is nn.Conv2d and _one_channel_3x3(m):
            m.__class__ = CPUOneChannelConv2d
            switched += 1
    return switched
