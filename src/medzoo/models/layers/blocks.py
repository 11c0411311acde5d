"""Shared building blocks, dimension-generic through the layer factories.

Every block takes ``spatial_dims`` first and maps ``(B, C_in, *S)`` to ``(B, C_out, *S')``. Blocks here are
meant to be reused across families (engineers of other model files: use them, ask before changing them):

- :class:`DoubleConv`: two conv-norm-act (the U-Net stage). ``(B, C_in, *S) -> (B, C_out, *S)``.
- :class:`UpConcat`: transposed-conv x2 upsampling, concatenation with the skip, then a :class:`DoubleConv`.
  ``(B, C_low, *S/2), (B, C_skip, *S) -> (B, C_out, *S)``. Pads the upsampled map when the skip is one
  voxel larger (odd sizes), so it also serves nets without a size rule.
- :class:`BasicBlock` / :class:`Bottleneck`: post-activation residual blocks (He et al. 2016), with stride
  and dilation, used by :mod:`medzoo.models.encoders.resnet`. ``expansion`` = 1 / 4.
- :class:`PreActBlock`: pre-activation residual block norm-act-conv x2 + identity (He et al. 2016b, as in
  SegResNet, Myronenko 2018); channels and size unchanged.
- :class:`UpsampleConv`: 1x1 conv then interpolation x``scale`` (SegResNet-style cheap upsampling).
- :func:`resize_to`: interpolate a feature map to a given spatial size (bilinear/trilinear).
- :func:`check_input_size`: the cheap forward-time size check raising ``InputSizeError``.

Activations are in place where it is safe (after a norm or a conv), so training uses less memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medzoo.models.layers.factories import (
    ConvNormAct,
    ConvTranspose,
    cat_channels,
    exporting,
    make_act,
    make_conv,
    make_norm,
    norm_act,
    overwritable,
)
from medzoo.models.registry import ModelCard

__all__ = [
    "BasicBlock", "Bottleneck", "DoubleConv", "PreActBlock", "UpConcat", "UpsampleConv", "check_input_size",
    "resize_to",
]


def resize_to(x: torch.Tensor, size: Sequence[int], align_corners: bool = False) -> torch.Tensor:
    """Linear (bi/trilinear) interpolation of ``x`` (B, C, *S) to spatial ``size``; no-op when equal."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[x.dim() - 2]
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=align_corners)


class DoubleConv(nn.Sequential):
    """Two conv-norm-act layers (the stage of a U-Net); the first may stride.

    Shapes: (B, in_channels, *S) -> (B, out_channels, *ceil(S / stride)).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        norm: str | None = "instance",
        act: str | None = "leakyrelu",
        dropout: float = 0.0,
        stride: int = 1,
        kernel_size: int = 3,
    ) -> None:
        super().__init__(
            ConvNormAct(spatial_dims, in_channels, out_channels, kernel_size, stride=stride, norm=norm,
                        act=act, dropout=dropout),
            ConvNormAct(spatial_dims, out_channels, out_channels, kernel_size, norm=norm, act=act),
        )


class UpConcat(nn.Module):
    """Upsample x2 by transposed conv, concatenate the skip, then :class:`DoubleConv`.

    Shapes: low (B, in_channels, *S), skip (B, skip_channels, *S2) with S2 in {2S, 2S-1}
    -> (B, out_channels, *S2).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        norm: str | None = "instance",
        act: str | None = "leakyrelu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.up = ConvTranspose[spatial_dims](in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(spatial_dims, out_channels + skip_channels, out_channels, norm, act, dropout)

    def forward(self, low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.up(low)
        if up.shape[2:] != skip.shape[2:]:  # odd skip sizes: crop the (one voxel larger) upsampled map
            up = up[(...,) + tuple(slice(0, s) for s in skip.shape[2:])]
        return self.conv(cat_channels((up, skip)))


class BasicBlock(nn.Module):
    """ResNet basic block: conv3-norm-act-conv3-norm + shortcut, act (He et al., CVPR 2016).

    Shapes: (B, in_channels, *S) -> (B, channels, *ceil(S / stride)).
    """

    expansion = 1

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: int,
        stride: int = 1,
        dilation: int = 1,
        norm: str | None = "batch",
        act: str | None = "relu",
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        nb = norm in (None, "none")
        self.conv1 = make_conv(spatial_dims, in_channels, channels, 3, stride, dilation, bias=nb)
        self.bn1 = make_norm(norm, spatial_dims, channels)
        self.act = make_act(act)
        self.conv2 = make_conv(spatial_dims, channels, channels, 3, 1, dilation, bias=nb)
        self.bn2 = make_norm(norm, spatial_dims, channels)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = norm_act(self.bn1, self.act, self.conv1(x), overwritable(self.conv1))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.act(out)


class Bottleneck(nn.Module):
    """ResNet bottleneck: 1x1 reduce, 3x3 (stride, dilation), 1x1 expand x4 + shortcut (He et al. 2016).

    Shapes: (B, in_channels, *S) -> (B, 4 * channels, *ceil(S / stride)).
    """

    expansion = 4

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: int,
        stride: int = 1,
        dilation: int = 1,
        norm: str | None = "batch",
        act: str | None = "relu",
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        nb = norm in (None, "none")
        out = channels * self.expansion
        self.conv1 = make_conv(spatial_dims, in_channels, channels, 1, bias=nb)
        self.bn1 = make_norm(norm, spatial_dims, channels)
        self.conv2 = make_conv(spatial_dims, channels, channels, 3, stride, dilation, bias=nb)
        self.bn2 = make_norm(norm, spatial_dims, channels)
        self.conv3 = make_conv(spatial_dims, channels, out, 1, bias=nb)
        self.bn3 = make_norm(norm, spatial_dims, out)
        self.act = make_act(act)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = norm_act(self.bn1, self.act, self.conv1(x), overwritable(self.conv1))
        out = norm_act(self.bn2, self.act, self.conv2(out), overwritable(self.conv2))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.act(out)


class PreActBlock(nn.Module):
    """Pre-activation residual block: (norm-act-conv3) x2 + identity (SegResNet, Myronenko 2018).

    Shapes: (B, channels, *S) -> (B, channels, *S). The activations are not in place (they act on the
    block input, which the identity path still needs).
    """

    def __init__(
        self, spatial_dims: int, channels: int, norm: str | None = "group", act: str | None = "relu",
        groups: int = 8,
    ) -> None:
        super().__init__()
        self.norm1 = make_norm(norm, spatial_dims, channels, groups=groups)
        self.act1 = make_act(act, inplace=False)
        self.conv1 = make_conv(spatial_dims, channels, channels, 3, bias=False)
        self.norm2 = make_norm(norm, spatial_dims, channels, groups=groups)
        self.act2 = make_act(act, inplace=True)
        self.conv2 = make_conv(spatial_dims, channels, channels, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(norm_act(self.norm1, self.act1, x))  # fused where it can be; x is left as it is
        out = self.conv2(norm_act(self.norm2, self.act2, out))
        return out + x


class UpsampleConv(nn.Module):
    """1x1 conv to ``out_channels`` then linear interpolation by ``scale`` (or to a given size).

    Shapes: (B, in_channels, *S) -> (B, out_channels, *(S * scale)) or (B, out_channels, *size).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, scale: int = 2) -> None:
        super().__init__()
        self.conv = make_conv(spatial_dims, in_channels, out_channels, 1, bias=False)
        self.scale = scale

    def forward(self, x: torch.Tensor, size: Sequence[int] | None = None) -> torch.Tensor:
        x = self.conv(x)
        if size is None:
            size = [s * self.scale for s in x.shape[2:]]
        return resize_to(x, size)


def check_input_size(rule: ModelCard, x: torch.Tensor) -> None:
    """Raise :class:`~medzoo.errors.InputSizeError` (naming the nearest valid size) if ``x`` breaks ``rule``.

    Cheap (a few integer operations); skipped while tracing/scripting/exporting so exported graphs stay
    free of Python-side checks.

    Args:
        rule: a card holding the instance's real ``size_divisor`` / ``min_size``.
        x: the input (B, C, *S).
    """
    if exporting():
        return
    rule.check_input(tuple(x.shape[2:]))
