"""Faster CPU gradients for two layers oneDNN handles poorly, with the same parameters and numbers.

Measured on the reference CPU (2 cores of an AMD EPYC, AVX2), batch 100, channels_last;
``scripts/bench_cpu_kernels.py`` times each layer both ways (JSON):

- ``nn.ConvTranspose2d``: autograd computes a transposed convolution's weight gradient on a slow
  oneDNN path. That gradient is also the weight gradient of the ordinary convolution
  ``conv2d(grad_out, weight, stride, padding)``, whose output has the transposed layer's input shape
  and whose weight has the same (in, out, kh, kw) layout, and oneDNN computes that one fast; the
  input gradient is the same ordinary convolution. Forward and backward of the seed decoder's
  64->32 layer (24->48 px): 75.6 -> 57.2 ms. (The dcgan decoder's 4x4 kernels are not on the slow
  path: 81 ms either way.)
- ``nn.Conv2d`` to one channel, 3x3, stride 1 (the seed decoder's last layer): its backward keeps the
  vector units idle. Written as matrix products instead (the nine taps' partial sums
  [N, HW, C] x [C, 9], then nine shifted adds; backward: nine shifted copies of the output gradient
  and two batched products), forward and backward of the 32->1 layer at 48 px: 27.2 -> 18.8 ms.

:func:`use_cpu_kernels` switches a module's eligible layers (their class changes, their parameters
and state_dict keys do not); inference, autocast, CUDA and every other layer keep PyTorch's own
kernels. ``tests/test_fast_path.py`` checks outputs and gradients against PyTorch's layers.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


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


#: (row, col) of each tap of a 3x3 kernel, in the order of weight.reshape(C, 9)'s columns
_TAPS = [(i, j) for i in range(3) for j in range(3)]


class _OneChannelConvFn(torch.autograd.Function):
    """conv2d(x, weight [1, C, 3, 3], bias, stride 1, padding 1) as matrix products and shifted adds."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        n, c, h, w = x.shape
        xm = x.permute(0, 2, 3, 1).reshape(n, h * w, c)              # channels_last: a view
        z = torch.matmul(xm, weight.reshape(c, 9))                    # [N, HW, taps]: each tap's share
        zp = F.pad(z.transpose(1, 2).reshape(n, 9, h, w), (1, 1, 1, 1))
        # output (r, s) takes tap (i, j) of input (r + i - 1, s + j - 1), i.e. padded plane (r + i, s + j)
        y = zp[:, 0, 0:h, 0:w].clone()
        for t, (i, j) in enumerate(_TAPS[1:], start=1):
            y += zp[:, t, i:i + h, j:j + w]
        if bias is not None:
            y += bias
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return y.unsqueeze(1)

    @staticmethod
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        n, c, h, w = x.shape
        gp = F.pad(grad_y[:, 0], (1, 1, 1, 1))
        # tap (i, j) of input (a, b) went to output (a - i + 1, b - j + 1): padded gradient (a - i + 2, b - j + 2)
        gz = torch.stack([gp[:, 2 - i:2 - i + h, 2 - j:2 - j + w] for i, j in _TAPS], dim=1).view(n, 9, h * w)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.matmul(gz.transpose(1, 2), weight.reshape(c, 9).t())      # [N, HW, C]
            grad_x = grad_x.view(n, h, w, c).permute(0, 3, 1, 2)                      # channels_last
        if ctx.needs_input_grad[1]:
            xm = x.permute(0, 2, 3, 1).reshape(n, h * w, c)
            grad_w = torch.matmul(gz, xm).sum(0).t().reshape(weight.shape)           # [taps, C] over the batch
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_y.sum().view(1)
        return grad_x, grad_w, grad_b


class CPUOneChannelConv2d(nn.Conv2d):
    """nn.Conv2d to one channel (3x3, stride 1, padding 1) as matrix products on the CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type != "cpu" or x.dim() != 4 or not torch.is_grad_enabled()
                or not x.is_contiguous(memory_format=torch.channels_last) or torch.is_autocast_enabled("cpu")):
            return super().forward(x)
        return _OneChannelConvFn.apply(x, self.weight, self.bias)


def _one_channel_3x3(m: nn.Conv2d) -> bool:
    # measured faster than oneDNN for 3x3 kernels only (5x5: 25 shifted planes cost more than they save)
    return (m.out_channels == 1 and m.groups == 1 and m.kernel_size == (3, 3) and m.stride == (1, 1)
            and m.dilation == (1, 1) and m.padding == (1, 1) and m.padding_mode == "zeros")


def use_cpu_kernels(module: nn.Module) -> int:
    """Switch the eligible layers of ``module`` to the kernels above; returns how many were switched.

    Spectrally normalised layers (their weight is a computed attribute) are left alone.
    """
    switched = 0
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
