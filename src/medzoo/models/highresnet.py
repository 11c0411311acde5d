"""HighResNet (HighRes3DNet).

Li, Wang, Fidon, Ourselin, Cardoso and Vercauteren, "On the Compactness, Efficiency, and Representation of
3D Convolutional Networks: Brain Parcellation as a Pretext Task", IPMI 2017 (arXiv:1707.01992).

Everything runs at full resolution: a 3x3x3 conv, three groups of three pre-activation residual blocks with
dilation 1, 2 and 4 (16, 32 and 64 channels), a 1x1x1 layer (80 channels) and a 1x1x1 classifier. No
pooling, so any input size works and the output has the input's size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medzoo.models.layers.factories import make_act, make_conv, make_dropout, make_norm
from medzoo.models.registry import ModelCard, register_model

HIGHRESNET_CARD = ModelCard(
    name="highresnet3d",
    spatial_dims=(2, 3),
    paper="Li et al., IPMI 2017 (HighRes3DNet)",
    typical_patch=(64, 64, 64),
    tiny_kwargs={"channels": (4, 4, 8), "blocks_per_group": 1, "fc_channels": 8},
    export_note="plain dilated conv graph; exports to ONNX (opset 17)",
    channels_last=True,  # measured gain: docs/benchmarks.md, "Channels-last per model"
)


class _ResBlock(nn.Module):
    """Pre-activation residual block: (norm -> act -> dilated conv) x 2 + shortcut.

    When the width grows, the shortcut pads the extra channels with zeros (as in the paper).
    Shapes: (B, in_channels, *S) -> (B, out_channels, *S).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, dilation: int,
                 norm: str | None, act: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            make_norm(norm, spatial_dims, in_channels),
            make_act(act, inplace=False),
            make_conv(spatial_dims, in_channels, out_channels, 3, dilation=dilation),
            make_norm(norm, spatial_dims, out_channels),
            make_act(act),
            make_conv(spatial_dims, out_channels, out_channels, 3, dilation=dilation),
        )
        self.extra = out_channels - in_channels
        self.spatial_dims = spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = F.pad(x, [0, 0] * self.spatial_dims + [0, self.extra]) if self.extra else x
        return self.body(x) + skip


class HighResNet(nn.Module):
    """HighResNet (Li et al., IPMI 2017): dilated residual network at full resolution.

    Default widths (paper): 16 channels for the first conv and the dilation-1 group, 32 for dilation 2,
    64 for dilation 4, 3 blocks per group, 80 channels before the classifier (about 0.8M parameters).

    Args:
        in_channels: input modalities (>= 1).
        num_classes: output classes (background included).
        spatial_dims: 2 or 3.
        channels: widths of the three groups (dilation 1, 2, 4).
        blocks_per_group: residual blocks per group (3 in the paper).
        fc_channels: width of the 1x1x1 layer before the classifier (80 in NiftyNet's implementation).
        norm: "batch" (paper), "instance", "group" or None.
        act: activation name (ReLU in the paper).
        dropout: channel dropout before the classifier.

    Shapes: (B, in_channels, *S) -> (B, num_classes, *S) logits, any S.
    """

    def __init__(self, in_channels: int, num_classes: int, spatial_dims: int = 3,
                 channels: tuple[int, int, int] = (16, 32, 64), blocks_per_group: int = 3,
                 fc_channels: int = 80, norm: str | None = "batch", act: str = "relu",
                 dropout: float = 0.0) -> None:
        super().__init__()
        d = spatial_dims
        self.stem = nn.Sequential(
            make_conv(d, in_channels, channels[0], 3, bias=False),
            make_norm(norm, d, channels[0]),
            make_act(act),
        )
        blocks: list[nn.Module] = []
        width = channels[0]
        for out, dilation in zip(channels, (1, 2, 4)):
            for _ in range(blocks_per_group):
                blocks.append(_ResBlock(d, width, out, dilation, norm, act))
                width = out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            make_norm(norm, d, width),
            make_act(act),
            make_conv(d, width, fc_channels, 1, bias=False),
            make_norm(norm, d, fc_channels),
            make_act(act),
            make_dropout(d, dropout),
            make_conv(d, fc_channels, num_classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, *S) -> (B, num_classes, *S)."""
        return self.head(self.blocks(self.stem(x)))


@register_model(HIGHRESNET_CARD)
def highresnet3d(in_channels: int, num_classes: int, spatial_dims: int = 3, **kwargs) -> HighResNet:
    """HighResNet with the paper's widths (see :class:`HighResNet`)."""
    return HighResNet(in_channels, num_classes, spatial_dims, **kwargs)
