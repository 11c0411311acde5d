"""U-Net, one dimension-generic class registered as ``unet3d`` and ``unet2d``.

Papers:
    - 3D: Çiçek, Abdulkadir, Lienkamp, Brox, Ronneberger. "3D U-Net: Learning Dense Volumetric Segmentation
      from Sparse Annotation." MICCAI 2016.
    - 2D: Ronneberger, Fischer, Brox. "U-Net: Convolutional Networks for Biomedical Image Segmentation."
      MICCAI 2015.

Differences from the papers (the modern, nnU-Net-like recipe): "same" padding so the output has the
input size, instance norm + leaky ReLU by default, channels doubling per level from ``features[0]``,
transposed-conv upsampling and concatenation skips.

Input-size rule: every spatial size a multiple of ``2 ** (len(features) - 1)`` (one 2x max-pooling per
level below the first).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medzoo.errors import ModelError
from medzoo.models.layers.blocks import DoubleConv, UpConcat, check_input_size
from medzoo.models.layers.factories import MaxPool, make_conv
from medzoo.models.registry import ModelCard, register_model

__all__ = ["UNet"]

_DEFAULT_FEATURES = {2: (16, 32, 64, 128, 256), 3: (16, 32, 64, 128)}


class UNet(nn.Module):
    """Dimension-generic U-Net with concatenation skips.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels (modalities).
        num_classes: output channels (classes including background).
        features: channels per level, finest first; depth = len(features) (>= 2).
        norm: "instance" (default), "batch", "group" or None.
        act: activation name (see :func:`medzoo.models.layers.factories.make_act`).
        dropout: channel-dropout probability inside every stage (0 = off).
        deep_supervision: if True, in train mode ``forward`` returns a list of logits, finest first
            (full size, 1/2, 1/4, ...: one per decoder level); eval mode always returns a tensor.
        name: the registry name used in error messages.

    Shapes:
        (B, in_channels, *S) -> (B, num_classes, *S), every S a multiple of ``self.size_divisor``.

    Attributes:
        encoder_prefixes: module-name prefixes of the encoder path (for
            :func:`medzoo.models.transfer.freeze`).
    """

    encoder_prefixes: tuple[str, ...] = ("encoder",)

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        features: Sequence[int] | None = None,
        norm: str | None = "instance",
        act: str | None = "leakyrelu",
        dropout: float = 0.0,
        deep_supervision: bool = False,
        name: str = "unet",
    ) -> None:
        super().__init__()
        features = tuple(features) if features is not None else _DEFAULT_FEATURES[spatial_dims]
        if len(features) < 2:
            raise ModelError(f"{name}: features needs at least 2 levels, got {features}")
        self.size_divisor = 2 ** (len(features) - 1)
        self._rule = ModelCard(name=name, size_divisor=self.size_divisor, min_size=self.size_divisor)
        self.deep_supervision = deep_supervision

        stages: list[nn.Module] = [DoubleConv(spatial_dims, in_channels, features[0], norm, act, dropout)]
        for cin, cout in zip(features[:-1], features[1:]):
            stages.append(nn.Sequential(
                MaxPool[spatial_dims](2), DoubleConv(spatial_dims, cin, cout, norm, act, dropout)
            ))
        self.encoder = nn.ModuleList(stages)
        rev = features[::-1]
        self.decoder = nn.ModuleList(
            UpConcat(spatial_dims, cin, cout, cout, norm, act, dropout) for cin, cout in zip(rev[:-1], rev[1:])
        )
        self.head = make_conv(spatial_dims, features[0], num_classes, 1)
        # Deep-supervision heads for the coarser decoder outputs (1/2, 1/4, ...), finest first.
        self.aux_heads = nn.ModuleList(
            make_conv(spatial_dims, c, num_classes, 1) for c in rev[1:-1][::-1]
        ) if deep_supervision else nn.ModuleList()

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        check_input_size(self._rule, x)
        skips: list[torch.Tensor] = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        decoded: list[torch.Tensor] = []
        for up in self.decoder:
            x = up(x, skips.pop())
            decoded.append(x)
        out = self.head(x)
        if self.deep_supervision and self.training:
            coarse = decoded[:-1][::-1]  # 1/2, 1/4, ... resolution
            return [out] + [h(f) for h, f in zip(self.aux_heads, coarse)]
        return out


def _build(in_channels: int, num_classes: int, spatial_dims: int, name: str, **kwargs) -> UNet:
    return UNet(spatial_dims, in_channels, num_classes, name=name, **kwargs)


@register_model(ModelCard(
    name="unet3d",
    spatial_dims=(3,),
    paper="Çiçek et al., MICCAI 2016 (3D U-Net)",
    size_divisor=8,
    min_size=8,
    typical_patch=(96, 96, 96),
    tiny_kwargs={"features": (4, 8, 16, 32)},
    channels_last=True,  # measured gain: docs/benchmarks.md, "Channels-last per model"
))
def unet3d(in_channels: int, num_classes: int, spatial_dims: int = 3, **kwargs) -> UNet:
    """3D U-Net (Çiçek et al. 2016); default features (16, 32, 64, 128): size multiple of 8."""
    return _build(in_channels, num_classes, spatial_dims, "unet3d", **kwargs)


@register_model(ModelCard(
    name="unet2d",
    spatial_dims=(2,),
    paper="Ronneberger et al., MICCAI 2015 (U-Net)",
    size_divisor=16,
    min_size=16,
    typical_patch=(256, 256),
    tiny_kwargs={"features": (4, 8, 16, 32, 64)},
    channels_last=True,  # measured gain: docs/benchmarks.md, "Channels-last per model"
))
def unet2d(in_channels: int, num_classes: int, spatial_dims: int = 2, **kwargs) -> UNet:
    """2D U-Net (Ronneberger et al. 2015); default features (16, 32, 64, 128, 256): size multiple of 16."""
    return _build(in_channels, num_classes, spatial_dims, "unet2d", **kwargs)
