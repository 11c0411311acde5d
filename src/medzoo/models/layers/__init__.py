"""Shared layers: factories keyed by spatial_dims and common blocks."""

from medzoo.models.layers.factories import (
    AdaptiveAvgPool,
    AvgPool,
    Conv,
    ConvNormAct,
    ConvTranspose,
    Dropout,
    FusedSequential,
    MaxPool,
    make_act,
    make_conv,
    make_dropout,
    make_norm,
)

__all__ = [
    "AdaptiveAvgPool", "AvgPool", "Conv", "ConvNormAct", "ConvTranspose", "Dropout", "FusedSequential", "MaxPool",
    "make_act", "make_conv", "make_dropout", "make_norm",
]
