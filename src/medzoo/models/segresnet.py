"""SegResNet: the encoder-decoder of Myronenko's BraTS 2018 winner, without the VAE branch.

Paper: Myronenko. "3D MRI Brain Tumor Segmentation Using Autoencoder Regularization." BrainLes (MICCAI
workshop) 2018.

Architecture: 3x3 conv to ``init_filters``, then per level a stride-2 3x3 conv (doubling channels, except
at level 0) and ``blocks_down[i]`` pre-activation residual blocks (GroupNorm 8 groups, ReLU). The decoder,
per level: 1x1 conv halving channels, linear upsampling to the skip's size, addition of the skip, then
``blocks_up[i]`` residual blocks. Head: GroupNorm, ReLU, 1x1 conv.

Reuse (engineer "models_b", ResNet3D-VAE): :class:`SegResNetEncoder` is the encoder alone; its
``forward`` returns the list of per-level features (finest first) and ``out_channels`` their channels.

Input-size rule: any size >= 2 ** (len(blocks_down) - 1) (8 by default). The strided convs round up and
the decoder upsamples to each skip's exact size, so no divisibility is needed; multiples of 8 avoid
interpolation at non-integer scales.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medzoo.errors import ModelError
from medzoo.models.layers.blocks import PreActBlock, UpsampleConv, check_input_size
from medzoo.models.layers.factories import FusedSequential, make_act, make_conv, make_dropout, make_norm
from medzoo.models.registry import ModelCard, register_model

__all__ = ["SegResNet", "SegResNetEncoder"]


class SegResNetEncoder(nn.Module):
    """SegResNet encoder (reusable, e.g. by ResNet3D-VAE).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        init_filters: channels at full resolution (8 or 16 in the paper); level i has init_filters * 2**i.
        blocks_down: residual blocks per level.
        norm: normalisation of the residual blocks ("group", 8 groups, as the paper).
        dropout: channel dropout after the initial conv (0.2 in the paper; default 0).

    Shapes:
        (B, in_channels, *S) -> list of len(blocks_down) tensors (B, init_filters * 2**i, *ceil(S / 2**i)).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        init_filters: int = 8,
        blocks_down: Sequence[int] = (1, 2, 2, 4),
        norm: str | None = "group",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.conv_init = make_conv(spatial_dims, in_channels, init_filters, 3, bias=False)
        self.dropout = make_dropout(spatial_dims, dropout)
        levels = []
        for i, n in enumerate(blocks_down):
            c = init_filters * 2**i
            down = (make_conv(spatial_dims, c // 2, c, 3, stride=2, bias=False) if i > 0 else nn.Identity())
            levels.append(nn.Sequential(down, *(PreActBlock(spatial_dims, c, norm) for _ in range(n))))
        self.levels = nn.ModuleList(levels)
        self.out_channels: tuple[int, ...] = tuple(init_filters * 2**i for i in range(len(blocks_down)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.dropout(self.conv_init(x))
        feats = []
        for level in self.levels:
            x = level(x)
            feats.append(x)
        return feats


class SegResNet(nn.Module):
    """SegResNet (Myronenko 2018) without the VAE regulariser.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        num_classes: output classes.
        init_filters: 8 (default) or 16 as in the paper.
        blocks_down: residual blocks per encoder level, default (1, 2, 2, 4).
        blocks_up: residual blocks per decoder level, default (1, 1, 1); len = len(blocks_down) - 1.
        norm: "group" (default), "instance", "batch" or None.
        dropout: dropout after the initial conv.
        name: registry name used in error messages.

    Shapes:
        (B, in_channels, *S) -> (B, num_classes, *S), every S >= 2 ** (len(blocks_down) - 1).
    """

    encoder_prefixes: tuple[str, ...] = ("encoder",)

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        init_filters: int = 8,
        blocks_down: Sequence[int] = (1, 2, 2, 4),
        blocks_up: Sequence[int] = (1, 1, 1),
        norm: str | None = "group",
        dropout: float = 0.0,
        name: str = "segresnet",
    ) -> None:
        super().__init__()
        self.encoder = SegResNetEncoder(spatial_dims, in_channels, init_filters, blocks_down, norm, dropout)
        chans = self.encoder.out_channels
        if len(blocks_up) != len(chans) - 1:
            raise ModelError(f"{name}: blocks_up needs {len(chans) - 1} entries, got {tuple(blocks_up)}")
        self.up_samples = nn.ModuleList(
            UpsampleConv(spatial_dims, chans[-1 - i], chans[-2 - i]) for i in range(len(blocks_up))
        )
        self.up_layers = nn.ModuleList(
            nn.Sequential(*(PreActBlock(spatial_dims, chans[-2 - i], norm) for _ in range(n)))
            for i, n in enumerate(blocks_up)
        )
        self.head = FusedSequential(
            make_norm(norm, spatial_dims, init_filters), make_act("relu"),
            make_conv(spatial_dims, init_filters, num_classes, 1),
        )
        self._rule = ModelCard(name=name, min_size=2 ** (len(blocks_down) - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(self._rule, x)
        feats = self.encoder(x)
        x = feats[-1]
        for up, layer, skip in zip(self.up_samples, self.up_layers, feats[-2::-1]):
            x = layer(up(x, skip.shape[2:]) + skip)
        return self.head(x)


@register_model(ModelCard(
    name="segresnet",
    spatial_dims=(2, 3),
    paper="Myronenko, BrainLes 2018 (SegResNet, without VAE)",
    size_divisor=1,
    min_size=8,
    typical_patch=(128, 128, 128),
    tiny_kwargs={"init_filters": 4, "blocks_down": (1, 1, 1, 1)},
    channels_last=True,  # measured gain: docs/benchmarks.md, "Channels-last per model"
))
def segresnet(in_channels: int, num_classes: int, spatial_dims: int = 3, **kwargs) -> SegResNet:
    """SegResNet (Myronenko 2018) without the VAE; any size >= 8."""
    return SegResNet(spatial_dims, in_channels, num_classes, name="segresnet", **kwargs)
