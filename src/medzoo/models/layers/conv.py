"""Transposed convolutions whose bias does not slow down their backward pass on the CPU.

On the CPU, PyTorch's ``convolution_backward`` of a transposed convolution takes far longer for the bias
gradient than for the input and weight gradients together when the map is channels-last or bf16: 10.3 ms
against 2.0 ms for a 64->32, 2x2x2, stride-2 bf16 channels-last convolution on a 2x64x20x28x20 input, where a
plain ``sum`` of the same gradient takes 0.4 ms. These classes run the convolution without its bias and add
the bias in place afterwards (cast to the output's dtype first: a mixed-dtype in-place add is slower than
the convolution), so autograd takes the bias gradient as that sum. Forward + backward of that convolution,
medians of 5 interleaved runs (``python -m benchmarks.layouts``, "conv transpose" rows): 1.34x faster than
``nn.ConvTranspose3d`` in bf16 channels-last, 1.44x in fp32 channels-last, 1.18x in bf16 in the default
layout. fp32 in the default layout stays on PyTorch's path, where the split measured 0.94-1.0x. In a whole
nnU-Net training step the gain is 1-2 %: the bias add costs a pass over the output.

They are drop-ins for ``nn.ConvTransposeNd`` (same parameters, state dict and ``output_size`` argument); on
other devices, without a bias, when no bias gradient is wanted (``no_grad``, inference mode, a frozen bias)
and under ONNX export, tracing or scripting they run PyTorch's forward as it is.

Example:
    >>> up = ConvTranspose3d(64, 32, kernel_size=2, stride=2)   # drop-in for nn.ConvTranspose3d
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medzoo.models.layers.norm import exporting, memory_format_of

__all__ = ["ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "splits_bias"]

_FUNCTIONAL = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def splits_bias(x: torch.Tensor, bias: torch.Tensor) -> bool:
    """Whether a transposed convolution of ``x`` adds ``bias`` apart from the convolution: when autograd
    will take the bias's gradient, on the CPU, and ``x`` is channels-last, not fp32, or under CPU autocast
    (see the module docstring). Without that gradient (prediction), the bias stays in the convolution,
    where it is free: 16 against 31 ms for a 16->8 fp32 channels-last convolution on a 4x16x48^3 input."""
    if x.device.type != "cpu" or not (bias.requires_grad and torch.is_grad_enabled()) or exporting():
        return False
    return (x.dtype != torch.float32 or torch.is_autocast_enabled("cpu")
            or memory_format_of(x) is not torch.contiguous_format)


class _SplitBias:
    """Forward of :class:`ConvTranspose3d` and its 1D/2D siblings (a mixin over ``nn.ConvTransposeNd``)."""

    _spatial_dims: int

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if self.bias is None or self.padding_mode != "zeros" or not splits_bias(input, self.bias):
            return super().forward(input, output_size)
        dims = self._spatial_dims
        output_padding = self._output_padding(
            input, output_size, self.stride, self.padding, self.kernel_size, dims, self.dilation,
        )  # fmt: skip
        y = _FUNCTIONAL[dims](input, self.weight, None, self.stride, self.padding, output_padding, self.groups,
                              self.dilation)
        # the convolution's backward does not need its output, so the bias can be added in place; cast first,
        # since a mixed-dtype in-place add is many times slower than the add itself
        return y.add_(self.bias.to(y.dtype).view(-1, *(1,) * dims))


class ConvTranspose1d(_SplitBias, nn.ConvTranspose1d):
    """``nn.ConvTranspose1d`` with the bias added apart on the CPU (see the module docstring)."""

    _spatial_dims = 1


class ConvTranspose2d(_SplitBias, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` with the bias added apart on the CPU (see the module docstring)."""

    _spatial_dims = 2


class ConvTranspose3d(_SplitBias, nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` with the bias added apart on the CPU (see the module docstring).

    Shapes: (B, in_channels, *S) -> (B, out_channels, *S_out), as ``nn.ConvTranspose3d``.
    """

    _spatial_dims = 3
