"""A faster CPU gradient for nn.ConvTranspose2d, with the same parameters and the same numbers.

In channels_last, autograd computes a transposed convolution's weight gradient on a slow oneDNN path
(on the reference CPU, 2 cores of an AMD EPYC: 72.7 ms for the seed decoder's 64->32 layer at
24->48 px, batch 100, four times its forward). That gradient is also the weight gradient of the
ordinary convolution ``conv2d(grad_out, weight, stride, padding)``, whose output has the transposed
layer's input shape and whose weight has the same (in, out, kh, kw) layout; oneDNN computes it in
33 ms. The input gradient is that same ordinary convolution. ``scripts/bench_cpu_kernels.py``
times each layer both ways (JSON).

:func:`use_cpu_kernels` switches a module's transposed convolutions to it (their class changes,
their parameters and state_dict keys do not); inference, autocast, CUDA and every other layer keep
PyTorch's own kernels. ``tests/test_fast_path.py`` checks outputs and gradients against PyTorch's layer.
(A matrix-product kernel for the decoders' one-channel last convolution was tried and dropped:
slower than oneDNN's backward.)
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
        if (x.device.type != "cpu" or output_size is not None or not torch.is_grad_enabled()
                or torch.is_autocast_enabled("cpu")):     # bf16 autocast: PyTorch's path casts for us
            return super().forward(x, output_size)
        return _ConvTranspose2dFn.apply(x, self.weight, self.bias, self.stride, self.padding,
                                        self.output_padding, self.dilation)


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
    return switched
