"""V-Net and a lighter V-Net.

Milletari, Navab and Ahmadi, "V-Net: Fully Convolutional Neural Networks for Volumetric Medical Image
Segmentation", 3DV 2016 (arXiv:1606.04797).

Architecture: 5x5x5 convolutions with PReLU, residual stages, 2x2x2 stride-2 convolutions to go down and
2x2x2 stride-2 transposed convolutions to go up, skip connections by concatenation. Widths double per level
(16, 32, 64, 128, 256 with the default ``base_channels=16``).

Differences from MedicalZooPytorch's ``VNet``/``VNetLight``:

* the input block works for any ``in_channels``: the residual of the first stage repeats the input channels
  when ``base_channels`` is a multiple of ``in_channels`` (for 1 channel this is the paper's "repeat 16
  times"), otherwise a 1x1x1 convolution projects it (the original crashes for 3 channels and more);
* the output is raw logits (no softmax) of shape (B, num_classes, *S);
* the size rule (multiple of 16, at least 16) is checked and raises :class:`~medzoo.errors.InputSizeError`
  naming the nearest valid size.
"""

from __future__ import annotations

import torch
from torch import nn

from medzoo.models.layers.factories import ConvTranspose, cat_channels, make_conv, make_dropout, make_norm
from medzoo.models.registry import ModelCard, register_model

_PAPER = "Milletari et al., 3DV 2016 (V-Net)"
_EXPORT_NOTE = "plain conv / transposed conv / norm / PReLU graph; exports to ONNX (opset 17)"

VNET_CARD = ModelCard(
    name="vnet",
    spatial_dims=(2, 3),
    paper=_PAPER,
    size_divisor=16,
    min_size=16,
    typical_patch=(64, 64, 64),
    tiny_kwargs={"base_channels": 2, "kernel_size": 3},
    export_note=_EXPORT_NOTE,
)
VNET_LIGHT_CARD = ModelCard(
    name="vnet_light",
    spatial_dims=(2, 3),
    paper=_PAPER + ", light variant (one conv per stage, MedicalZooPytorch)",
    size_divisor=16,
    min_size=16,
    typical_patch=(64, 64, 64),
    tiny_kwargs={"base_channels": 2, "kernel_size": 3},
    export_note=_EXPORT_NOTE,
)


class _ConvStack(nn.Sequential):
    """``n`` times (5x5x5 conv -> norm -> PReLU) at a fixed width."""

    def __init__(self, spatial_dims: int, channels: int, n: int, kernel_size: int, norm: str | None) -> None:
        layers: list[nn.Module] = []
        for _ in range(n):
            layers += [
                make_conv(spatial_dims, channels, channels, kernel_size, bias=norm in (None, "none")),
                make_norm(norm, spatial_dims, channels),
                nn.PReLU(channels),
            ]
        super().__init__(*layers)


class _InputBlock(nn.Module):
    """First stage: conv(in -> out) + residual of the input, broadcast to ``out`` channels.

    Shapes: (B, in_channels, *S) -> (B, out_channels, *S).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int,
                 norm: str | None) -> None:
        super().__init__()
        self.conv = make_conv(spatial_dims, in_channels, out_channels, kernel_size, bias=norm in (None, "none"))
        self.norm = make_norm(norm, spatial_dims, out_channels)
        self.repeats = out_channels // in_channels if out_channels % in_channels == 0 else 0
        self.project = (
            nn.Identity() if self.repeats else make_conv(spatial_dims, in_channels, out_channels, 1, bias=False)
        )
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x.repeat(1, self.repeats, *([1] * (x.dim() - 2))) if self.repeats else self.project(x)
        return self.act(self.norm(self.conv(x)) + skip)


class _DownStage(nn.Module):
    """Stride-2 conv doubling the width, then a residual stack of ``n_convs`` convs.

    Shapes: (B, C, *S) -> (B, 2C, *S/2).
    """

    def __init__(self, spatial_dims: int, in_channels: int, n_convs: int, kernel_size: int, norm: str | None,
                 dropout: float) -> None:
        super().__init__()
        out = 2 * in_channels
        self.down = nn.Sequential(
            make_conv(spatial_dims, in_channels, out, 2, stride=2, padding=0, bias=norm in (None, "none")),
            make_norm(norm, spatial_dims, out),
            nn.PReLU(out),
        )
        self.drop = make_dropout(spatial_dims, dropout)
        self.convs = _ConvStack(spatial_dims, out, n_convs, kernel_size, norm)
        self.act = nn.PReLU(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        down = self.down(x)
        return self.act(self.convs(self.drop(down)) + down)


class _UpStage(nn.Module):
    """Transposed conv to ``out_channels // 2``, concatenation with the skip, residual conv stack.

    Shapes: (B, in_channels, *S), skip (B, out_channels // 2, *2S) -> (B, out_channels, *2S).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, n_convs: int, kernel_size: int,
                 norm: str | None, dropout: float) -> None:
        super().__init__()
        half = out_channels // 2
        self.up = nn.Sequential(
            ConvTranspose[spatial_dims](in_channels, half, 2, stride=2, bias=norm in (None, "none")),
            make_norm(norm, spatial_dims, half),
            nn.PReLU(half),
        )
        self.drop = make_dropout(spatial_dims, dropout)
        self.convs = _ConvStack(spatial_dims, out_channels, n_convs, kernel_size, norm)
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        cat = cat_channels([self.up(self.drop(x)), self.drop(skip)])
        return self.act(self.convs(cat) + cat)


class VNet(nn.Module):
    """V-Net (Milletari et al., 3DV 2016): residual encoder-decoder with 5x5x5 convs and PReLU.

    Four stride-2 levels, so every spatial size must be a multiple of 16 (and >= 16); other sizes raise
    :class:`~medzoo.errors.InputSizeError` naming the nearest valid size (the predictor pads to it).

    Default widths (``base_channels=16``, as in the paper): 16, 32, 64, 128, 256; 5x5x5 convs
    per residual stage (1, 2, 3, 2) down and (2, 2, 1, 1) up, as in the reference PyTorch port used by
    MedicalZooPytorch (``light=True``: one conv everywhere). See the card / ``medzoo models`` for the
    parameter count; use ``vnet_light`` or a smaller ``base_channels`` on a CPU.

    Args:
        in_channels: input modalities (any number >= 1).
        num_classes: output classes (background included).
        spatial_dims: 2 or 3.
        base_channels: width of the first stage; doubles per level.
        light: one conv per residual stage (MedicalZooPytorch's VNetLight).
        kernel_size: convolution kernel (5 in the paper).
        norm: "batch" (default, as in MedicalZooPytorch), "instance", "group" or None (paper: none).
        dropout: channel dropout on the two deepest levels (MedicalZooPytorch used 0.5; default 0).

    Shapes: (B, in_channels, *S) -> (B, num_classes, *S) logits.
    """

    def __init__(self, in_channels: int, num_classes: int, spatial_dims: int = 3, base_channels: int = 16,
                 light: bool = False, kernel_size: int = 5, norm: str | None = "batch",
                 dropout: float = 0.0) -> None:
        super().__init__()
        self._card = VNET_LIGHT_CARD if light else VNET_CARD
        b, k, d = base_channels, kernel_size, spatial_dims
        down_convs = (1, 1, 1, 1) if light else (1, 2, 3, 2)
        up_convs = (1, 1, 1, 1) if light else (2, 2, 1, 1)
        self.inp = _InputBlock(d, in_channels, b, k, norm)
        self.down = nn.ModuleList([
            _DownStage(d, b, down_convs[0], k, norm, 0.0),
            _DownStage(d, 2 * b, down_convs[1], k, norm, 0.0),
            _DownStage(d, 4 * b, down_convs[2], k, norm, dropout),
            _DownStage(d, 8 * b, down_convs[3], k, norm, dropout),
        ])
        self.up = nn.ModuleList([
            _UpStage(d, 16 * b, 16 * b, up_convs[0], k, norm, dropout),
            _UpStage(d, 16 * b, 8 * b, up_convs[1], k, norm, dropout),
            _UpStage(d, 8 * b, 4 * b, up_convs[2], k, norm, 0.0),
            _UpStage(d, 4 * b, 2 * b, up_convs[3], k, norm, 0.0),
        ])
        self.out = nn.Sequential(
            make_conv(d, 2 * b, num_classes, k, bias=norm in (None, "none")),
            make_norm(norm, d, num_classes),
            nn.PReLU(num_classes),
            make_conv(d, num_classes, num_classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, *S) -> (B, num_classes, *S); S must be a multiple of 16."""
        self._card.check_input(tuple(x.shape[2:]))
        skips = [self.inp(x)]
        for stage in self.down:
            skips.append(stage(skips[-1]))
        out = skips.pop()
        for stage in self.up:
            out = stage(out, skips.pop())
        return self.out(out)


@register_model(VNET_CARD)
def vnet(in_channels: int, num_classes: int, spatial_dims: int = 3, **kwargs) -> VNet:
    """V-Net, paper widths (see :class:`VNet`)."""
    return VNet(in_channels, num_classes, spatial_dims, light=False, **kwargs)


@register_model(VNET_LIGHT_CARD)
def vnet_light(in_channels: int, num_classes: int, spatial_dims: int = 3, **kwargs) -> VNet:
    """V-Net with one conv per residual stage and ``base_channels=8`` by default (see :class:`VNet`)."""
    kwargs.setdefault("base_channels", 8)
    return VNet(in_channels, num_classes, spatial_dims, light=True, **kwargs)
