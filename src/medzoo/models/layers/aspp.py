"""Atrous Spatial Pyramid Pooling (Chen et al., "Rethinking Atrous Convolution for Semantic Image
Segmentation", arXiv 2017 — DeepLabv3; used unchanged by DeepLabv3+, ECCV 2018), for 2D and 3D.

Branches: one 1x1 conv, one 3x3 conv per atrous rate, and image pooling (global average -> 1x1 conv ->
broadcast back). They are concatenated and projected by a 1x1 conv.

The pooling branch has no normalisation (its conv has a bias instead), so it works for batch 1 in train
mode even when the pooled map is 1x1(x1), where BatchNorm would fail.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medzoo.models.layers.factories import (
    AdaptiveAvgPool,
    ConvNormAct,
    cat_channels,
    make_act,
    make_conv,
    make_dropout,
)

__all__ = ["ASPP", "default_rates"]


def default_rates(output_stride: int) -> tuple[int, ...]:
    """The paper's atrous rates: (6, 12, 18) at output stride 16, doubled (12, 24, 36) at 8."""
    scale = max(1, 16 // output_stride)
    return tuple(r * scale for r in (6, 12, 18))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels of the input feature map.
        out_channels: channels of every branch and of the output (256 in the paper).
        rates: atrous rates of the 3x3 branches (see :func:`default_rates`).
        norm: normalisation of the conv branches and of the projection ("batch" in the paper).
        act: activation name.
        dropout: channel dropout after the projection (0.1 in the paper's code).

    Shapes:
        (B, in_channels, *S) -> (B, out_channels, *S), any S >= 1.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int = 256,
        rates: Sequence[int] = (6, 12, 18),
        norm: str | None = "batch",
        act: str | None = "relu",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        branches = [ConvNormAct(spatial_dims, in_channels, out_channels, 1, norm=norm, act=act)]
        branches += [
            ConvNormAct(spatial_dims, in_channels, out_channels, 3, dilation=r, norm=norm, act=act)
            for r in rates
        ]
        self.branches = nn.ModuleList(branches)
        self.pooling = nn.Sequential(
            AdaptiveAvgPool[spatial_dims](1),
            make_conv(spatial_dims, in_channels, out_channels, 1, bias=True),
            make_act(act),
        )
        self.project = nn.Sequential(
            ConvNormAct(spatial_dims, out_channels * (len(rates) + 2), out_channels, 1, norm=norm, act=act),
            make_dropout(spatial_dims, dropout),
        )
        self.rates = tuple(rates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [b(x) for b in self.branches]
        feats.append(self.pooling(x).expand_as(feats[0]))
        return self.project(cat_channels(feats))
