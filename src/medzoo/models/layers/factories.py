"""Layer factories keyed by ``spatial_dims``, so one network definition serves 2D and 3D.

The norms, the fused norm + activation and the channel concatenation come from :mod:`medzoo.accel` (fast in
either memory layout on the CPU, the same values as PyTorch's layers); networks take them from here.

Example:
    >>> conv = Conv[3](16, 32, kernel_size=3, padding=1)   # nn.Conv3d
    >>> norm = make_norm("instance", 3, 32)
"""

from __future__ import annotations

import torch
from torch import nn

from medzoo.accel.concat import cat_channels
from medzoo.accel.norm import (
    GroupNorm,
    InstanceNorm1d,
    InstanceNorm2d,
    InstanceNorm3d,
    exporting,
    fused_activation_slope,
    fused_norm_act,
    instance_norm_act,
    norm_act,
    overwritable,
)
from medzoo.errors import ModelError

__all__ = [
    "AdaptiveAvgPool", "AvgPool", "Conv", "ConvNormAct", "ConvTranspose", "Dropout", "FusedSequential", "GroupNorm",
    "InstanceNorm", "MaxPool", "cat_channels", "exporting", "fused_activation_slope", "fused_norm_act", "instance_norm_act",
    "make_act", "make_conv", "make_dropout", "make_norm", "norm_act", "overwritable",
]

Conv: dict[int, type[nn.Module]] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
ConvTranspose: dict[int, type[nn.Module]] = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
MaxPool: dict[int, type[nn.Module]] = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
AvgPool: dict[int, type[nn.Module]] = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
AdaptiveAvgPool: dict[int, type[nn.Module]] = {
    1: nn.AdaptiveAvgPool1d,
    2: nn.AdaptiveAvgPool2d,
    3: nn.AdaptiveAvgPool3d,
}
Dropout: dict[int, type[nn.Module]] = {1: nn.Dropout, 2: nn.Dropout2d, 3: nn.Dropout3d}
_BatchNorm = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
InstanceNorm: dict[int, type[nn.Module]] = {1: InstanceNorm1d, 2: InstanceNorm2d, 3: InstanceNorm3d}  # either layout


def _check_dims(spatial_dims: int) -> None:
    if spatial_dims not in (1, 2, 3):
        raise ModelError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}")


def make_conv(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, ...] = 3,
    stride: int | tuple[int, ...] = 1,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
    bias: bool = True,
    padding: int | tuple[int, ...] | None = None,
) -> nn.Module:
    """A convolution with "same" padding by default (for odd kernels): output = ceil(input / stride)."""
    _check_dims(spatial_dims)
    if padding is None:
        ks = (kernel_size,) * spatial_dims if isinstance(kernel_size, int) else tuple(kernel_size)
        dl = (dilation,) * spatial_dims if isinstance(dilation, int) else tuple(dilation)
        padding = tuple((k - 1) // 2 * d for k, d in zip(ks, dl))
    return Conv[spatial_dims](
        in_channels, out_channels, kernel_size, stride=stride, padding=padding,
        dilation=dilation, groups=groups, bias=bias,
    )


def make_norm(kind: str | None, spatial_dims: int, channels: int, groups: int = 8) -> nn.Module:
    """A normalisation layer: ``"batch"``, ``"instance"`` (affine), ``"group"`` or ``None`` (identity)."""
    _check_dims(spatial_dims)
    if kind is None or kind == "none":
        return nn.Identity()
    if kind == "batch":
        return _BatchNorm[spatial_dims](channels)
    if kind == "instance":
        return InstanceNorm[spatial_dims](channels, affine=True)
    if kind == "group":
        g = min(groups, channels)
        while channels % g:
            g -= 1
        return GroupNorm(g, channels)  # nn.GroupNorm, not slow in channels-last bf16 on the CPU
    raise ModelError(f"unknown norm '{kind}' (batch, instance, group or none)")


def make_act(kind: str | None = "relu", inplace: bool = True) -> nn.Module:
    """An activation: ``relu``, ``leakyrelu`` (slope 0.01), ``prelu``, ``elu``, ``gelu``, ``silu`` or None."""
    if kind is None or kind == "none":
        return nn.Identity()
    if kind == "relu":
        return nn.ReLU(inplace=inplace)
    if kind in ("leakyrelu", "leaky_relu"):
        return nn.LeakyReLU(0.01, inplace=inplace)
    if kind == "prelu":
        return nn.PReLU()
    if kind == "elu":
        return nn.ELU(inplace=inplace)
    if kind == "gelu":
        return nn.GELU()
    if kind == "silu":
        return nn.SiLU(inplace=inplace)
    raise ModelError(f"unknown activation '{kind}'")


def make_dropout(spatial_dims: int, p: float) -> nn.Module:
    """Channel dropout for feature maps (identity when ``p == 0``)."""
    _check_dims(spatial_dims)
    return Dropout[spatial_dims](p) if p > 0 else nn.Identity()


class FusedSequential(nn.Sequential):
    """``nn.Sequential`` (same modules and state dict) that runs each instance or group norm followed by a
    (leaky) ReLU as one fused op (:func:`~medzoo.accel.norm.norm_act`, same values; a pair with hooks
    or running statistics runs module by module)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 - see the class
        modules = list(self)
        i = 0
        while i < len(modules):
            slope = fused_activation_slope(modules[i], modules[i + 1]) if i + 1 < len(modules) else None
            if slope is not None:
                x = fused_norm_act(modules[i], modules[i + 1], x, slope, i > 0 and overwritable(modules[i - 1]))
                i += 2
            else:
                x = modules[i](x)
                i += 1
        return x


class ConvNormAct(FusedSequential):
    """conv -> norm -> activation, the most common block.

    An instance or group norm followed by a (leaky) ReLU runs as one fused op
    (:func:`~medzoo.accel.norm.norm_act`, same values; the modules run one by one when the block has
    dropout, running statistics, or hooks on the norm or the activation).

    Shapes: (B, in_channels, *S) -> (B, out_channels, *ceil(S / stride)).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...] = 3,
        stride: int | tuple[int, ...] = 1,
        dilation: int | tuple[int, ...] = 1,
        norm: str | None = "instance",
        act: str | None = "leakyrelu",
        dropout: float = 0.0,
    ) -> None:
        layers = [
            make_conv(spatial_dims, in_channels, out_channels, kernel_size, stride, dilation,
                      bias=norm in (None, "none")),
            make_norm(norm, spatial_dims, out_channels),
        ]
        if dropout > 0:
            layers.append(make_dropout(spatial_dims, dropout))
        layers.append(make_act(act))
        super().__init__(*layers)

    def _fused_slope(self) -> float | None:
        """The activation's negative slope when norm + activation run fused, else None."""
        return fused_activation_slope(self[1], self[2]) if len(self) == 3 else None
