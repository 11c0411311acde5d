"""DenseVoxNet (called DenseVoxelNet in MedicalZooPytorch).

Yu, Cheng, Dou, Yang, Chen, Qin and Heng, "Automatic 3D Cardiovascular MR Segmentation with
Densely-Connected Volumetric ConvNets", MICCAI 2017 (arXiv:1708.00573).

A stride-2 3x3x3 conv, a dense block (12 layers, growth rate 12), a transition (norm, act, 1x1x1 conv,
2x max pooling), a second dense block, then two stride-2 transposed convs back to full resolution and a
1x1x1 classifier. The paper adds an auxiliary classifier on the first block (upsampled by a transposed conv)
for deep supervision; here it is built only with ``deep_supervision=True`` and only returned in train mode,
as ``[main, auxiliary]`` (both at full resolution). In eval mode the output is always one tensor.

Differences from MedicalZooPytorch: a 3x3x3 first conv as in the paper (the port uses a stride-2 1x1x1
conv, which just drops 7 of 8 voxels); no tuple output; the size rule is checked.
"""

from __future__ import annotations

import torch
from torch import nn

from medzoo.models.layers.factories import (
    ConvTranspose,
    MaxPool,
    make_act,
    make_conv,
    make_dropout,
    make_norm,
)
from medzoo.models.registry import ModelCard, register_model

DENSEVOXELNET_CARD = ModelCard(
    name="densevoxelnet",
    spatial_dims=(2, 3),
    paper="Yu et al., MICCAI 2017 (DenseVoxNet)",
    size_divisor=4,
    min_size=8,
    typical_patch=(64, 64, 64),
    tiny_kwargs={"init_features": 4, "growth_rate": 2, "num_layers": 2, "up_features": 4},
    export_note="conv / max-pool / transposed conv graph; exports to ONNX (opset 17)",
    channels_last=True,  # measured gain: docs/benchmarks.md, "Channels-last per model"
)


class _DenseBlock(nn.Module):
    """``num_layers`` x (norm -> act -> 3x3x3 conv -> dropout), each concatenated to its input.

    Shapes: (B, C, *S) -> (B, C + num_layers * growth_rate, *S).
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_layers: int, growth_rate: int,
                 norm: str | None, act: str, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        ch = in_channels
        for _ in range(num_layers):
            self.layers.append(nn.Sequential(
                make_norm(norm, spatial_dims, ch), make_act(act, inplace=False),
                make_conv(spatial_dims, ch, growth_rate, 3, bias=False), make_dropout(spatial_dims, dropout),
            ))
            ch += growth_rate
        self.out_channels = ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.cat([x, layer(x)], dim=1)
        return x


class DenseVoxelNet(nn.Module):
    """DenseVoxNet (Yu et al., MICCAI 2017).

    Every spatial size must be a multiple of 4 and at least 8 (one stride-2 conv and one pooling);
    other sizes raise :class:`~medzoo.errors.InputSizeError` naming the nearest valid size.

    Default widths (paper): 16 initial features, two dense blocks of 12 layers with growth rate 12
    (160 and 304 channels out), 64 channels in the upsampling path (about 1.3M parameters).

    Args:
        in_channels: input modalities (>= 1).
        num_classes: output classes (background included).
        spatial_dims: 2 or 3.
        init_features: width of the first (stride-2) conv.
        growth_rate: features added by each dense layer.
        num_layers: layers per dense block.
        up_features: width of the upsampling path.
        norm: "batch" (paper), "instance", "group" or None.
        act: activation ("relu").
        dropout: dropout after each dense layer (paper: 0.2).
        deep_supervision: build the auxiliary classifier and return ``[main, aux]`` in train mode.

    Shapes: (B, in_channels, *S) -> (B, num_classes, *S) logits.
    """

    def __init__(self, in_channels: int, num_classes: int, spatial_dims: int = 3, init_features: int = 16,
                 growth_rate: int = 12, num_layers: int = 12, up_features: int = 64, norm: str | None = "batch",
                 act: str = "relu", dropout: float = 0.0, deep_supervision: bool = False) -> None:
        super().__init__()
        d = spatial_dims
        self._card = DENSEVOXELNET_CARD
        self.deep_supervision = deep_supervision
        self.stem = make_conv(d, in_channels, init_features, 3, stride=2, bias=False)
        self.block1 = _DenseBlock(d, init_features, num_layers, growth_rate, norm, act, dropout)
        c1 = self.block1.out_channels
        self.transition = nn.Sequential(make_norm(norm, d, c1), make_act(act), make_conv(d, c1, c1, 1, bias=False))
        self.pool = MaxPool[d](2)
        self.block2 = _DenseBlock(d, c1, num_layers, growth_rate, norm, act, dropout)
        c2 = self.block2.out_channels
        self.up = nn.Sequential(
            make_norm(norm, d, c2), make_act(act), make_conv(d, c2, up_features, 1, bias=False),
            ConvTranspose[d](up_features, up_features, 2, stride=2, bias=False),
            make_norm(norm, d, up_features), make_act(act),
            ConvTranspose[d](up_features, up_features, 2, stride=2, bias=False),
            make_norm(norm, d, up_features), make_act(act),
        )
        self.classifier = make_conv(d, up_features, num_classes, 1)
        self.aux = ConvTranspose[d](c1, num_classes, 2, stride=2) if deep_supervision else None

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """(B, in_channels, *S) -> (B, num_classes, *S); in train mode with deep supervision a list
        ``[main, aux]`` of two such tensors."""
        self._card.check_input(tuple(x.shape[2:]))
        t = self.transition(self.block1(self.stem(x)))
        main = self.classifier(self.up(self.block2(self.pool(t))))
        if self.training and self.aux is not None:
            return [main, self.aux(t)]
        return main


@register_model(DENSEVOXELNET_CARD)
def densevoxelnet(in_channels: int, num_classes: int, spatial_dims: int = 3, **kwargs) -> DenseVoxelNet:
    """DenseVoxNet with the paper's widths (see :class:`DenseVoxelNet`)."""
    return DenseVoxelNet(in_channels, num_classes, spatial_dims, **kwargs)
