"""SkipDenseNet3D: dense blocks with transitions down and an upsampled skip from every block.

Bui, Shin and Moon, "3D Densely Convolutional Networks for Volumetric Segmentation", arXiv:1709.03199
(2017), as in MedicalZooPytorch's ``SkipDenseNet3D``.

Three full-resolution 3x3x3 convs, a stride-2 conv, then dense blocks separated by transitions (norm, act,
1x1x1 conv halving the width, stride-2 2x2x2 conv). After block ``i`` (at 1/2^(i+1) resolution) a skip goes
back to full resolution: a 1x1x1 conv to ``num_classes`` maps and a per-class (grouped) transposed conv with
stride 2^(i+1). The upsampled maps of all blocks and the full-resolution features are concatenated and
classified by a 1x1x1 conv.

Differences from MedicalZooPytorch: the original's grouped transposed convs read the block features
directly and crash when the block width is not a multiple of ``num_classes``; here a 1x1x1 conv first maps
them to ``num_classes`` channels, which works for any class count and is far smaller (the original's 16x
upsampling kernel alone has millions of weights). Logits are returned (no softmax).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from medzoo.errors import ModelError
from medzoo.models.layers.factories import ConvTranspose, make_act, make_conv, make_dropout, make_norm
from medzoo.models.registry import ModelCard, register_model

SKIPDENSENET_CARD = ModelCard(
    name="skipdensenet3d",
    spatial_dims=(2, 3),
    paper="Bui et al., arXiv:1709.03199, 2017 (SkipDenseNet3D)",
    size_divisor=16,
    min_size=16,
    typical_patch=(64, 64, 64),
    tiny_kwargs={"growth_rate": 2, "block_config": (1, 1, 1, 1), "init_features": 4, "bn_size": 1},
    export_note="conv / grouped transposed conv graph; exports to ONNX (opset 17)",
    channels_last=True,  # measured gain: docs/benchmarks.md, "Channels-last per model"
)


class _DenseLayer(nn.Module):
    """Bottleneck dense layer: norm-act-1x1x1 conv (bn_size*growth) -> norm-act-3x3x3 conv (growth).

    Shapes: (B, C, *S) -> (B, C + growth_rate, *S) (input concatenated with the new features).
    """

    def __init__(self, spatial_dims: int, in_channels: int, growth_rate: int, bn_size: int, norm: str | None,
                 act: str, dropout: float) -> None:
        super().__init__()
        mid = bn_size * growth_rate
        self.body = nn.Sequential(
            make_norm(norm, spatial_dims, in_channels), make_act(act, inplace=False),
            make_conv(spatial_dims, in_channels, mid, 1, bias=False),
            make_norm(norm, spatial_dims, mid), make_act(act),
            make_conv(spatial_dims, mid, growth_rate, 3, bias=False),
            make_dropout(spatial_dims, dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


class SkipDenseNet3D(nn.Module):
    """SkipDenseNet3D (Bui et al., 2017).

    With ``len(block_config) = L`` blocks the input is downsampled by 2^L, so every spatial size must be a
    multiple of 2^L (16 by default) and at least 2^L; other sizes raise
    :class:`~medzoo.errors.InputSizeError` naming the nearest valid size.

    Default widths (as MedicalZooPytorch): 32 initial features, growth rate 16, 4 blocks of 4 layers,
    bottleneck factor 4 (about 0.8M parameters).

    Args:
        in_channels: input modalities (>= 1).
        num_classes: output classes (background included).
        spatial_dims: 2 or 3.
        growth_rate: features added by each dense layer.
        block_config: layers per dense block.
        init_features: width of the full-resolution convs.
        bn_size: bottleneck factor of the dense layers.
        norm: "batch" (as the original), "instance", "group" or None.
        act: activation ("relu").
        dropout: dropout after each dense layer (MedicalZooPytorch: 0.1).

    Shapes: (B, in_channels, *S) -> (B, num_classes, *S) logits.
    """

    def __init__(self, in_channels: int, num_classes: int, spatial_dims: int = 3, growth_rate: int = 16,
                 block_config: tuple[int, ...] = (4, 4, 4, 4), init_features: int = 32, bn_size: int = 4,
                 norm: str | None = "batch", act: str = "relu", dropout: float = 0.0) -> None:
        super().__init__()
        if not block_config:
            raise ModelError("block_config needs at least one dense block")
        d, f = spatial_dims, init_features
        divisor = 2 ** len(block_config)
        self._card = dataclasses.replace(SKIPDENSENET_CARD, size_divisor=divisor, min_size=divisor)
        self.features = nn.Sequential(
            make_conv(d, in_channels, f, 3, bias=False), make_norm(norm, d, f), make_act(act),
            make_conv(d, f, f, 3, bias=False), make_norm(norm, d, f), make_act(act),
            make_conv(d, f, f, 3, bias=False),
        )
        self.pool_first = nn.Sequential(
            make_norm(norm, d, f), make_act(act), make_conv(d, f, f, 2, stride=2, padding=0, bias=False),
        )
        self.blocks = nn.ModuleList()
        self.transitions = nn.ModuleList()
        self.ups = nn.ModuleList()
        ch = f
        for i, n_layers in enumerate(block_config):
            layers = []
            for _ in range(n_layers):
                layers.append(_DenseLayer(d, ch, growth_rate, bn_size, norm, act, dropout))
                ch += growth_rate
            self.blocks.append(nn.Sequential(*layers))
            scale = 2 ** (i + 1)
            self.ups.append(nn.Sequential(
                make_norm(norm, d, ch), make_act(act), make_conv(d, ch, num_classes, 1, bias=False),
                # kernel 2s, padding s/2: output = s * input exactly, smooth (overlapping) upsampling
                ConvTranspose[d](num_classes, num_classes, 2 * scale, stride=scale, padding=scale // 2,
                                 groups=num_classes, bias=False),
            ))
            if i < len(block_config) - 1:
                self.transitions.append(nn.Sequential(
                    make_norm(norm, d, ch), make_act(act), make_conv(d, ch, ch // 2, 1, bias=False),
                    make_conv(d, ch // 2, ch // 2, 2, stride=2, padding=0, bias=False),
                ))
                ch //= 2
        cat = num_classes * len(block_config) + f
        self.classifier = nn.Sequential(make_norm(norm, d, cat), make_act(act), make_conv(d, cat, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, *S) -> (B, num_classes, *S); S must be a multiple of 2^len(block_config)."""
        self._card.check_input(tuple(x.shape[2:]))
        full = self.features(x)
        out = self.pool_first(full)
        maps = []
        for i, block in enumerate(self.blocks):
            out = block(out)
            maps.append(self.ups[i](out))
            if i < len(self.transitions):
                out = self.transitions[i](out)
        return self.classifier(torch.cat([*maps, full], dim=1))


@register_model(SKIPDENSENET_CARD)
def skipdensenet3d(in_channels: int, num_classes: int, spatial_dims: int = 3, **kwargs) -> SkipDenseNet3D:
    """SkipDenseNet3D with MedicalZooPytorch's widths (see :class:`SkipDenseNet3D`)."""
    return SkipDenseNet3D(in_channels, num_classes, spatial_dims, **kwargs)
