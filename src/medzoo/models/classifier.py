"""A small volume classifier (MedicalZooPytorch's simple 3D CNN classifier, made size-independent).

Conv-norm-act blocks with 2x max pooling (ceil mode, so odd sizes are fine), global average pooling,
dropout and a linear layer: (B, in_channels, *S) -> (B, num_classes) logits for any S. The CNN design
follows the common VGG-style volume classifiers (e.g. Zunair et al., "Uniformizing Techniques to Process
CT scans with 3D CNNs for Tuberculosis Prediction", PRIME/MICCAI 2020); there is no fixed input size
because the head reads globally pooled features.
"""

from __future__ import annotations

import torch
from torch import nn

from medzoo.errors import ModelError
from medzoo.models.layers.factories import AdaptiveAvgPool, ConvNormAct, MaxPool
from medzoo.models.registry import ModelCard, register_model

SIMPLE3DCNN_CARD = ModelCard(
    name="simple3dcnn",
    spatial_dims=(2, 3),
    paper="VGG-style volume classifier (cf. Zunair et al., PRIME/MICCAI 2020)",
    typical_patch=(64, 64, 64),
    task="classification",
    tiny_kwargs={"channels": (4, 8)},
    export_note="conv / max-pool / global average pool / linear; exports to ONNX (opset 17)",
)


class Simple3DCNN(nn.Module):
    """Small volume classifier.

    Default widths: 16, 32, 64, 128 (one block per width, each block two 3x3x3 conv-norm-act layers, the
    first three blocks followed by 2x max pooling), dropout 0.3, about 0.9M parameters.

    Args:
        in_channels: input modalities (>= 1).
        num_classes: number of classes (>= 2; logits, use cross-entropy).
        spatial_dims: 2 or 3.
        channels: width of each block.
        norm: "batch" (default), "instance", "group" or None.
        act: activation ("relu").
        dropout: dropout before the linear layer.

    Shapes: (B, in_channels, *S) -> (B, num_classes), any S.
    """

    def __init__(self, in_channels: int, num_classes: int, spatial_dims: int = 3,
                 channels: tuple[int, ...] = (16, 32, 64, 128), norm: str | None = "batch", act: str = "relu",
                 dropout: float = 0.3) -> None:
        super().__init__()
        if num_classes < 2:
            raise ModelError(f"num_classes must be >= 2 for a classifier, got {num_classes}")
        d = spatial_dims
        layers: list[nn.Module] = []
        ch = in_channels
        for i, w in enumerate(channels):
            layers += [ConvNormAct(d, ch, w, norm=norm, act=act), ConvNormAct(d, w, w, norm=norm, act=act)]
            if i < len(channels) - 1:
                layers.append(MaxPool[d](2, ceil_mode=True))
            ch = w
        self.features = nn.Sequential(*layers)
        self.pool = AdaptiveAvgPool[d](1)
        self.head = nn.Sequential(nn.Flatten(1), nn.Dropout(dropout), nn.Linear(ch, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, *S) -> (B, num_classes) logits."""
        return self.head(self.pool(self.features(x)))


@register_model(SIMPLE3DCNN_CARD)
def simple3dcnn(in_channels: int, num_classes: int, spatial_dims: int = 3, **kwargs) -> Simple3DCNN:
    """Small volume classifier (see :class:`Simple3DCNN`)."""
    return Simple3DCNN(in_channels, num_classes, spatial_dims, **kwargs)
