"""Full-resolution dense networks from MedicalZooPytorch (its DENSENET1/2/3).

Dolz, Gopinath, Yuan, Lombaert, Desrosiers and Ben Ayed, "HyperDense-Net: A hyper-densely connected CNN for
multi-modal image segmentation", IEEE TMI 2018 (arXiv:1804.02967), where these are the baselines
"single path (early fusion)", "dual path (late fusion)" and "disentangled modalities with early fusion".

All three stack nine densely connected 3x3x3 layers at full resolution (widths 25, 25, 25, 50, 50, 50, 75,
75, 75; each layer sees the concatenation of the input and every previous layer), then 1x1x1
"fully connected" layers (400, 200, 150) and a 1x1x1 classifier. MedicalZooPytorch hard-codes the
concatenated widths (its versions crash for channel counts other than 2 or 3); here widths are computed, so
any ``in_channels`` works. Every conv is "same"-padded (HyperDense-Net's own code uses valid convolutions),
so the output has the input's spatial size. MedicalZooPytorch's versions use plain (undilated) 3x3x3
convolutions and so do these. Unlike MedicalZooPytorch, the 1x1x1 layers are separated by activations (stacked linear 1x1x1
convs would collapse into one).

- ``densenet3d_singlepath``: all channels enter one dense path (early fusion).
- ``densenet3d_dualpath``: the channels are split into two groups (first ``ceil(C/2)`` and the rest; with
  one channel both paths get it), each group has its own dense path and 1x1x1 layers, the 150-channel
  features are concatenated (late fusion) and classified. With two channels this is MedicalZooPytorch's
  DualPathDenseNet.
- ``densenet3d_dualsingle``: each channel gets its own first dense layer (any number of channels, built in
  a ModuleList), the results are concatenated and go through one dense path.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from medzoo.errors import ModelError
from medzoo.models.layers.factories import make_act, make_conv, make_dropout, make_norm
from medzoo.models.registry import ModelCard, register_model

PAPER_WIDTHS = (25, 25, 25, 50, 50, 50, 75, 75, 75)
PAPER_HEAD = (400, 200, 150)

_TINY = {"widths": (4, 4, 6), "head": (8,)}
_EXPORT_NOTE = "plain conv / concat graph; exports to ONNX (opset 17)"
_PAPER = "Dolz et al., IEEE TMI 2018 (HyperDense-Net baselines, MedicalZooPytorch DenseNet3D)"

SINGLEPATH_CARD = ModelCard(
    name="densenet3d_singlepath", spatial_dims=(2, 3), paper=_PAPER, typical_patch=(32, 32, 32),
    tiny_kwargs=_TINY, export_note=_EXPORT_NOTE,
)
DUALPATH_CARD = ModelCard(
    name="densenet3d_dualpath", spatial_dims=(2, 3), paper=_PAPER, typical_patch=(32, 32, 32),
    tiny_kwargs=_TINY, export_note=_EXPORT_NOTE,
)
DUALSINGLE_CARD = ModelCard(
    name="densenet3d_dualsingle", spatial_dims=(2, 3), paper=_PAPER, typical_patch=(32, 32, 32),
    tiny_kwargs=_TINY, export_note=_EXPORT_NOTE,
)


class DenseLayer(nn.Module):
    """norm -> activation -> dropout -> 3x3x3 "same" conv; returns only the new features.

    Shapes: (B, in_channels, *S) -> (B, out_channels, *S).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm: str | None = "batch",
                 act: str = "relu", dropout: float = 0.0, pre_activation: bool = True) -> None:
        super().__init__()
        pre: list[nn.Module] = []
        if pre_activation:
            pre = [make_norm(norm, spatial_dims, in_channels), _act(act, in_channels),
                   make_dropout(spatial_dims, dropout)]
        self.body = nn.Sequential(*pre, make_conv(spatial_dims, in_channels, out_channels, 3, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _act(kind: str, channels: int) -> nn.Module:
    """An activation; ``prelu`` gets one slope per channel (as in HyperDense-Net)."""
    return nn.PReLU(channels) if kind == "prelu" else make_act(kind, inplace=False)


class DenseStack(nn.Module):
    """Densely connected layers: layer i sees cat(input, out_1, ..., out_{i-1}).

    Shapes: (B, in_channels, *S) -> (B, in_channels + sum(widths), *S).
    """

    def __init__(self, spatial_dims: int, in_channels: int, widths: tuple[int, ...], norm: str | None,
                 act: str, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        ch = in_channels
        for w in widths:
            self.layers.append(DenseLayer(spatial_dims, ch, w, norm, act, dropout))
            ch += w
        self.out_channels = ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.cat([x, layer(x)], dim=1)
        return x


class FullyConnectedHead(nn.Sequential):
    """norm -> act, then 1x1x1 "fully connected" layers each followed by act and dropout.

    Shapes: (B, in_channels, *S) -> (B, head[-1], *S).
    """

    def __init__(self, spatial_dims: int, in_channels: int, head: tuple[int, ...], norm: str | None, act: str,
                 dropout: float) -> None:
        layers: list[nn.Module] = [make_norm(norm, spatial_dims, in_channels), _act(act, in_channels)]
        ch = in_channels
        for w in head:
            layers += [make_conv(spatial_dims, ch, w, 1), _act(act, w), make_dropout(spatial_dims, dropout)]
            ch = w
        super().__init__(*layers)
        self.out_channels = ch


class SinglePathDenseNet(nn.Module):
    """Single dense path over all input channels (early fusion), full resolution.

    Default widths: dense layers ``PAPER_WIDTHS``, 1x1x1 layers ``PAPER_HEAD`` (about 2.7M parameters for
    one channel; memory grows with the patch: use about 32^3 patches on a CPU).

    Args:
        in_channels: input modalities (>= 1).
        num_classes: output classes (background included).
        spatial_dims: 2 or 3.
        widths: output width of each dense layer.
        head: widths of the 1x1x1 layers before the classifier.
        norm: normalisation ("batch" as in the original).
        act: activation ("relu" as in MedicalZooPytorch).
        dropout: dropout inside dense layers and after each 1x1x1 layer (MedicalZooPytorch: 0.1 / 0.5).

    Shapes: (B, in_channels, *S) -> (B, num_classes, *S), any S.
    """

    def __init__(self, in_channels: int, num_classes: int, spatial_dims: int = 3,
                 widths: tuple[int, ...] = PAPER_WIDTHS, head: tuple[int, ...] = PAPER_HEAD,
                 norm: str | None = "batch", act: str = "relu", dropout: float = 0.0) -> None:
        super().__init__()
        self.dense = DenseStack(spatial_dims, in_channels, tuple(widths), norm, act, dropout)
        self.head = FullyConnectedHead(spatial_dims, self.dense.out_channels, tuple(head), norm, act, dropout)
        self.classifier = make_conv(spatial_dims, self.head.out_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, *S) -> (B, num_classes, *S)."""
        return self.classifier(self.head(self.dense(x)))


class DualPathDenseNet(nn.Module):
    """Two dense paths over two channel groups, late fusion by concatenation (or sum) of their features.

    Group 1 is channels ``[0, ceil(C/2))``, group 2 the rest; with one channel both paths get it.
    Arguments as :class:`SinglePathDenseNet`, plus ``fusion`` ("concat" or "sum").

    Shapes: (B, in_channels, *S) -> (B, num_classes, *S), any S.
    """

    def __init__(self, in_channels: int, num_classes: int, spatial_dims: int = 3,
                 widths: tuple[int, ...] = PAPER_WIDTHS, head: tuple[int, ...] = PAPER_HEAD,
                 norm: str | None = "batch", act: str = "relu", dropout: float = 0.0,
                 fusion: str = "concat") -> None:
        super().__init__()
        if fusion not in ("concat", "sum"):
            raise ModelError(f"fusion must be 'concat' or 'sum', got '{fusion}'")
        split = math.ceil(in_channels / 2)
        self.groups = [(0, split), (split, in_channels)] if in_channels > 1 else [(0, 1), (0, 1)]
        self.fusion = fusion
        self.paths = nn.ModuleList()
        for lo, hi in self.groups:
            dense = DenseStack(spatial_dims, hi - lo, tuple(widths), norm, act, dropout)
            self.paths.append(nn.Sequential(
                dense, FullyConnectedHead(spatial_dims, dense.out_channels, tuple(head), norm, act, dropout)))
        feat = self.paths[0][1].out_channels
        self.classifier = make_conv(spatial_dims, feat * (2 if fusion == "concat" else 1), num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, *S) -> (B, num_classes, *S)."""
        feats = [path(x[:, lo:hi]) for path, (lo, hi) in zip(self.paths, self.groups)]
        fused = torch.cat(feats, dim=1) if self.fusion == "concat" else feats[0] + feats[1]
        return self.classifier(fused)


class DualSingleDenseNet(nn.Module):
    """Per-modality first dense layer (disentangled modalities), then one shared dense path (early fusion).

    Each of the ``in_channels`` modalities gets its own first layer (``widths[0]`` features, concatenated
    with the modality itself); the ``in_channels * (1 + widths[0])`` channels then go through the remaining
    dense layers, the 1x1x1 layers and the classifier. Arguments as :class:`SinglePathDenseNet`.

    Shapes: (B, in_channels, *S) -> (B, num_classes, *S), any S.
    """

    def __init__(self, in_channels: int, num_classes: int, spatial_dims: int = 3,
                 widths: tuple[int, ...] = PAPER_WIDTHS, head: tuple[int, ...] = PAPER_HEAD,
                 norm: str | None = "batch", act: str = "relu", dropout: float = 0.0) -> None:
        super().__init__()
        widths = tuple(widths)
        self.early = nn.ModuleList(
            DenseLayer(spatial_dims, 1, widths[0], norm, act, dropout) for _ in range(in_channels)
        )
        fused = in_channels * (1 + widths[0])
        self.single = SinglePathDenseNet(fused, num_classes, spatial_dims, widths[1:], head, norm, act, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, *S) -> (B, num_classes, *S)."""
        parts = []
        for c, layer in enumerate(self.early):
            xc = x[:, c:c + 1]
            parts += [xc, layer(xc)]
        return self.single(torch.cat(parts, dim=1))


@register_model(SINGLEPATH_CARD)
def densenet3d_singlepath(in_channels: int, num_classes: int, spatial_dims: int = 3,
                          **kwargs) -> SinglePathDenseNet:
    """MedicalZooPytorch DENSENET1 (see :class:`SinglePathDenseNet`)."""
    return SinglePathDenseNet(in_channels, num_classes, spatial_dims, **kwargs)


@register_model(DUALPATH_CARD)
def densenet3d_dualpath(in_channels: int, num_classes: int, spatial_dims: int = 3,
                        **kwargs) -> DualPathDenseNet:
    """MedicalZooPytorch DENSENET2 (see :class:`DualPathDenseNet`)."""
    return DualPathDenseNet(in_channels, num_classes, spatial_dims, **kwargs)


@register_model(DUALSINGLE_CARD)
def densenet3d_dualsingle(in_channels: int, num_classes: int, spatial_dims: int = 3,
                          **kwargs) -> DualSingleDenseNet:
    """MedicalZooPytorch DENSENET3 (see :class:`DualSingleDenseNet`)."""
    return DualSingleDenseNet(in_channels, num_classes, spatial_dims, **kwargs)
