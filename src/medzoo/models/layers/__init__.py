"""Shared layers: factories keyed by spatial_dims (fast norms and concatenation included) and common blocks."""

from medzoo.models.layers.factories import (
    AdaptiveAvgPool,
    AvgPool,
    Conv,
    ConvNormAct,
    ConvTranspose,
    Dropout,
    FusedSequential,
    GroupNorm,
    InstanceNorm,
    MaxPool,
    cat_channels,
    exporting,
    fused_activation_slope,
    fused_norm_act,
    instance_norm_act,
    make_act,
    make_conv,
    make_dropout,
    make_norm,
    norm_act,
    overwritable,
)

__all__ = [
    "AdaptiveAvgPool", "AvgPool", "Conv", "ConvNormAct", "ConvTranspose", "Dropout", "FusedSequential", "GroupNorm",
    "InstanceNorm", "MaxPool", "cat_channels", "exporting", "fused_activation_slope", "fused_norm_act", "instance_norm_act",
    "make_act", "make_conv", "make_dropout", "make_norm", "norm_act", "overwritable",
]
