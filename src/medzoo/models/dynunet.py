"""The dynamic U-Net of nnU-Net (Isensee et al., Nature Methods 2021), configured by stages.

Every stage has two ``conv -> instance norm -> leaky ReLU (0.01)`` blocks (the first one strided to go down),
the decoder upsamples with transposed convolutions (kernel = stride), concatenates the skip and runs two more
blocks; a 1x1 convolution gives the logits. Depth, features, kernel sizes and strides per stage are arguments,
so the same class serves 2D and 3D, isotropic and anisotropic data. :func:`dynunet_config_for` derives them
from a patch size and a voxel spacing the way nnU-Net's planner does.

With ``conv_bias=True`` (nnU-Net's default plans) the network computes exactly what
``dynamic_network_architectures.architectures.unet.PlainConvUNet`` computes for the same configuration, and its
parameters come in the same order with the same shapes (tested), so weights can be copied one to one.

Speed: the conv bias in front of an instance norm is cancelled by the norm, so ``conv_bias=False`` gives the
same function with less work; norm and activation run as one fused op that keeps either memory layout
(:func:`medzoo.accel.norm.instance_norm_act`, on the CPU medzoo's kernel, :mod:`medzoo.accel.kernels`); the
encoder keeps no extra copies of the skips.

Example:
    >>> import medzoo
    >>> net = medzoo.create_model("dynunet", in_channels=1, num_classes=3, spatial_dims=3,
    ...                           features=(32, 64, 128, 256, 320))
    >>> cfg = dynunet_config_for((40, 56, 40), (1.0, 1.0, 1.0))
    >>> net = medzoo.create_model("dynunet", in_channels=1, num_classes=3, **cfg.model_kwargs())
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from medzoo.errors import InputSizeError, ModelError
from medzoo.models.layers.factories import (
    Conv,
    ConvTranspose,
    InstanceNorm,
    cat_channels,
    instance_norm_act,
    overwritable,
)
from medzoo.models.registry import ModelCard, register_model

__all__ = ["DynUNet", "DynUNetConfig", "dynunet_config_for", "instance_norm_act"]

_NORMS = InstanceNorm


def _per_axis(value: int | Sequence[int], spatial_dims: int, what: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * spatial_dims
    value = tuple(int(v) for v in value)
    if len(value) != spatial_dims:
        raise ModelError(f"dynunet: {what} {value} must have {spatial_dims} entries (one per spatial axis)")
    return value


class ConvNormAct(nn.Module):
    """``conv -> instance norm (affine) -> leaky ReLU``; the norm and activation can be switched off.

    Shapes: (B, C_in, *S) -> (B, C_out, *ceil(S / stride)).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int],
        stride: Sequence[int],
        conv_bias: bool,
        act: bool = True,
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        self.conv = Conv[spatial_dims](
            in_channels, out_channels, tuple(kernel_size), stride=tuple(stride),
            padding=tuple((k - 1) // 2 for k in kernel_size), bias=conv_bias,
        )
        self.norm = _NORMS[spatial_dims](out_channels, eps=1e-5, affine=True)
        self.act = nn.LeakyReLU(negative_slope, inplace=True) if act else nn.Identity()
        self.negative_slope = negative_slope if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return instance_norm_act(self.conv(x), self.norm.weight, self.norm.bias, self.norm.eps,
                                 self.negative_slope, overwrite=overwritable(self.conv))


class ResidualBlock(nn.Module):
    """A basic residual block (ResNet-D style, as in nnU-Net's residual encoder).

    ``conv-norm-act -> conv-norm`` plus a skip (average pooling when strided, then a 1x1 conv + norm when the
    channel count changes), added, then leaky ReLU. Shapes: (B, C_in, *S) -> (B, C_out, *ceil(S / stride)).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int],
        stride: Sequence[int],
        conv_bias: bool,
    ) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(spatial_dims, in_channels, out_channels, kernel_size, stride, conv_bias)
        self.conv2 = ConvNormAct(spatial_dims, out_channels, out_channels, kernel_size, [1] * spatial_dims,
                                 conv_bias, act=False)
        skip: list[nn.Module] = []
        if any(s != 1 for s in stride):
            pool = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}[spatial_dims]
            skip.append(pool(tuple(stride), tuple(stride)))
        if in_channels != out_channels:
            skip.append(ConvNormAct(spatial_dims, in_channels, out_channels, [1] * spatial_dims,
                                    [1] * spatial_dims, False, act=False))
        self.skip = nn.Sequential(*skip) if skip else nn.Identity()
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.conv1(x))
        out = out + self.skip(x)
        return self.act(out)


class DynUNet(nn.Module):
    """nnU-Net's configurable U-Net.

    Args:
        in_channels: input channels (modalities).
        num_classes: output classes (background included).
        spatial_dims: 2 or 3.
        features: channels per stage, e.g. ``(32, 64, 128, 256, 320)``; the number of stages is its length.
        kernel_sizes: per stage, an int or one kernel size per axis (default 3 everywhere).
        strides: per stage, an int or one stride per axis (default ``1`` for the first stage, ``2`` after).
        deep_supervision: in train mode, return a list ``[full-res logits, 1/2-res logits, ...]`` (one per
            decoder stage, finest first); in eval mode the network always returns a tensor.
        residual: use a residual encoder (a stem block, then one basic residual block per stage).
        conv_bias: bias in the convolutions (nnU-Net's plans use ``True``; it is cancelled by the instance norm,
            so ``False`` computes the same function a little faster).
        negative_slope: leaky ReLU slope.

    Shapes:
        (B, in_channels, *S) -> (B, num_classes, *S), where each S[d] is a multiple of the product of the
        strides along axis d (``self.size_divisors``); other sizes raise :class:`InputSizeError`.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        spatial_dims: int = 3,
        features: Sequence[int] = (32, 64, 128, 256, 320),
        kernel_sizes: Sequence[int | Sequence[int]] | None = None,
        strides: Sequence[int | Sequence[int]] | None = None,
        deep_supervision: bool = False,
        residual: bool = False,
        conv_bias: bool = True,
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise ModelError(f"dynunet: spatial_dims must be 1, 2 or 3, got {spatial_dims}")
        features = [int(f) for f in features]
        n = len(features)
        if n < 2:
            raise ModelError(f"dynunet: needs at least 2 stages, got features={features}")
        if kernel_sizes is None:
            kernel_sizes = [3] * n
        if strides is None:
            strides = [1] + [2] * (n - 1)
        if len(kernel_sizes) != n or len(strides) != n:
            raise ModelError(
                f"dynunet: features ({n}), kernel_sizes ({len(kernel_sizes)}) and strides ({len(strides)}) "
                "need one entry per stage"
            )
        self.spatial_dims = spatial_dims
        self.features = tuple(features)
        self.kernel_sizes = [_per_axis(k, spatial_dims, "kernel size") for k in kernel_sizes]
        self.strides = [_per_axis(s, spatial_dims, "stride") for s in strides]
        for k in self.kernel_sizes:
            if any(v % 2 == 0 for v in k):
                raise ModelError(f"dynunet: kernel sizes must be odd, got {k}")
        self.deep_supervision = deep_supervision
        self.residual = residual
        self.size_divisors = tuple(
            math.prod(s[d] for s in self.strides) for d in range(spatial_dims)
        )
        ones = [1] * spatial_dims

        # Registration order (encoder, decoder blocks, upsamplers, heads) mirrors PlainConvUNet's parameter order.
        self.stem = (
            ConvNormAct(spatial_dims, in_channels, features[0], self.kernel_sizes[0], ones, conv_bias)
            if residual else None
        )
        encoder = []
        channels = features[0] if residual else in_channels
        for s in range(n):
            if residual:
                encoder.append(ResidualBlock(spatial_dims, channels, features[s], self.kernel_sizes[s],
                                             self.strides[s], conv_bias))
            else:
                encoder.append(nn.Sequential(
                    ConvNormAct(spatial_dims, channels, features[s], self.kernel_sizes[s], self.strides[s],
                                conv_bias, negative_slope=negative_slope),
                    ConvNormAct(spatial_dims, features[s], features[s], self.kernel_sizes[s], ones, conv_bias,
                                negative_slope=negative_slope),
                ))
            channels = features[s]
        self.encoder = nn.ModuleList(encoder)

        decoder, upsamples, heads = [], [], []
        for s in range(n - 1, 0, -1):  # coarse to fine
            below, skip = features[s], features[s - 1]
            stride = self.strides[s]
            upsamples.append(ConvTranspose[spatial_dims](below, skip, stride, stride, bias=conv_bias))
            decoder.append(nn.Sequential(
                ConvNormAct(spatial_dims, 2 * skip, skip, self.kernel_sizes[s - 1], ones, conv_bias,
                            negative_slope=negative_slope),
                ConvNormAct(spatial_dims, skip, skip, self.kernel_sizes[s - 1], ones, conv_bias,
                            negative_slope=negative_slope),
            ))
            # Lower-resolution heads exist only with deep supervision, so every parameter is trained; nnU-Net
            # weights without deep supervision load through medzoo.models.transfer.load_matching_weights.
            if deep_supervision or s == 1:
                heads.append(Conv[spatial_dims](skip, num_classes, 1))
        self.decoder = nn.ModuleList(decoder)
        self.upsamples = nn.ModuleList(upsamples)
        self.heads = nn.ModuleList(heads)

    def _check_size(self, x: torch.Tensor) -> None:
        spatial = tuple(x.shape[2:])
        if len(spatial) != self.spatial_dims:
            raise InputSizeError(
                f"dynunet expects (B, C, {', '.join('S' * self.spatial_dims)}) inputs, got shape {tuple(x.shape)}"
            )
        if any(s % d for s, d in zip(spatial, self.size_divisors)):
            valid = tuple(int(math.ceil(s / d) * d) for s, d in zip(spatial, self.size_divisors))
            raise InputSizeError(
                f"dynunet cannot take spatial size {spatial} (each axis must be a multiple of "
                f"{self.size_divisors}); nearest valid size is {valid}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """(B, C_in, *S) -> (B, K, *S) logits, or a list finest-first in train mode with deep supervision."""
        self._check_size(x)
        if self.stem is not None:
            x = self.stem(x)
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        want_all = self.deep_supervision and self.training
        outputs = []
        last = len(self.decoder) - 1
        for i, (up, block) in enumerate(zip(self.upsamples, self.decoder)):
            x = block(cat_channels((up(x), skips[-(i + 2)])))
            if want_all or i == last:
                outputs.append(self.heads[i if self.deep_supervision else 0](x))
        if want_all:
            return outputs[::-1]
        return outputs[-1]


# ----------------------------------------------------------------------------------------------- planner
@dataclass(frozen=True)
class DynUNetConfig:
    """Stages derived by :func:`dynunet_config_for`.

    Attributes:
        features: channels per stage.
        kernel_sizes: per stage, a kernel size per axis.
        strides: per stage, a stride per axis (the first is all ones).
        patch_size: the requested patch rounded up to a multiple of ``size_divisors`` per axis.
        size_divisors: product of the strides per axis.
    """

    features: tuple[int, ...]
    kernel_sizes: tuple[tuple[int, ...], ...]
    strides: tuple[tuple[int, ...], ...]
    patch_size: tuple[int, ...]
    size_divisors: tuple[int, ...]

    def model_kwargs(self) -> dict:
        """Keyword arguments for ``create_model("dynunet", ...)`` (spatial_dims included), JSON-able."""
        return {
            "spatial_dims": len(self.patch_size),
            "features": list(self.features),
            "kernel_sizes": [list(k) for k in self.kernel_sizes],
            "strides": [list(s) for s in self.strides],
        }


def dynunet_config_for(
    patch_size: Sequence[int],
    spacing: Sequence[float],
    max_features: int = 320,
    base: int = 32,
    min_feature_map: int = 4,
    max_stages: int | None = None,
) -> DynUNetConfig:
    """Derive stages (strides, kernels, features) for a patch and spacing, following nnU-Net's planner rule.

    Going down one stage halves every axis that (a) is still at least ``2 * min_feature_map`` voxels long and
    (b) is not too coarse: its current spacing is less than twice the finest current spacing among those axes.
    A lone axis is only halved if it is at least ``3 * min_feature_map`` long. A kernel is 1 along an axis
    whose spacing is still at least twice the finest (e.g. 1x3x3 on the slice axis of thick-slice MRI) and 3
    once it is within a factor 2. The bottleneck always gets a 3-kernel. Features double from ``base`` per
    stage up to ``max_features``. The patch is rounded up to a multiple of the strides' product per axis.

    Args:
        patch_size: patch per spatial axis (voxels), 2 or 3 entries.
        spacing: voxel spacing per axis (mm), same length.
        max_features: cap on channels per stage.
        base: channels of the first stage.
        min_feature_map: smallest size an axis may reach at the bottleneck.
        max_stages: optional cap on the number of stages (including the first, unstrided one).

    Returns:
        A :class:`DynUNetConfig`; ``.model_kwargs()`` gives the ``create_model`` arguments.
    """
    dims = len(patch_size)
    if len(spacing) != dims or dims not in (1, 2, 3):
        raise ModelError(f"dynunet_config_for: patch_size {tuple(patch_size)} and spacing {tuple(spacing)} "
                         "must have the same length (2 or 3)")
    if any(s <= 0 for s in spacing) or any(p < 1 for p in patch_size):
        raise ModelError(f"dynunet_config_for: patch {tuple(patch_size)} and spacing {tuple(spacing)} must be > 0")
    cur_spacing = [float(s) for s in spacing]
    cur_size = [float(p) for p in patch_size]
    kernel = [1] * dims
    strides: list[tuple[int, ...]] = [(1,) * dims]
    kernels: list[tuple[int, ...]] = []
    while max_stages is None or len(strides) < max_stages:
        axes = [d for d in range(dims) if cur_size[d] >= 2 * min_feature_map]
        if not axes:
            break
        finest = min(cur_spacing[d] for d in axes)
        axes = [d for d in axes if cur_spacing[d] / finest < 2]
        if not axes or (len(axes) == 1 and cur_size[axes[0]] < 3 * min_feature_map):
            break
        overall_finest = min(cur_spacing)
        kernel = [3 if kernel[d] == 3 or cur_spacing[d] / overall_finest < 2 else 1 for d in range(dims)]
        kernels.append(tuple(kernel))
        stride = tuple(2 if d in axes else 1 for d in range(dims))
        for d in axes:
            cur_spacing[d] *= 2
            cur_size[d] = math.ceil(cur_size[d] / 2)
        strides.append(stride)
    kernels.append((3,) * dims)
    divisors = tuple(math.prod(s[d] for s in strides) for d in range(dims))
    padded = tuple(int(math.ceil(p / k) * k) for p, k in zip(patch_size, divisors))
    features = tuple(min(base * 2**i, max_features) for i in range(len(strides)))
    return DynUNetConfig(features, tuple(kernels), tuple(strides), padded, divisors)


# ------------------------------------------------------------------------------------------------ registry
@register_model(ModelCard(
    name="dynunet",
    spatial_dims=(2, 3),
    paper="Isensee et al., nnU-Net, Nature Methods 2021",
    # Default 5 stages with stride 2 on every axis: 2**4. With custom (anisotropic) strides the rule is per axis,
    # the product of the strides along that axis (``model.size_divisors``); this card gives the default.
    size_divisor=16,
    min_size=16,
    typical_patch=(128, 128, 128),
    tiny_kwargs={"features": (4, 8, 16)},
    channels_last=True,  # measured gain: docs/benchmarks.md, "Channels-last per model"
))
def dynunet(*, in_channels: int, num_classes: int, spatial_dims: int = 3, **kwargs) -> DynUNet:
    """nnU-Net's dynamic U-Net; see :class:`DynUNet` for the arguments."""
    return DynUNet(in_channels, num_classes, spatial_dims, **kwargs)
