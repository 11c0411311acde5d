"""DeepLabv3+ with a ResNet encoder, for 2D and 3D.

Paper: Chen, Zhu, Papandreou, Schroff, Adam. "Encoder-Decoder with Atrous Separable Convolution for
Semantic Image Segmentation." ECCV 2018 (DeepLabv3+), on the ASPP of DeepLabv3 (Chen et al., arXiv 2017).

Composition (fixed encoder -> decoder -> head, as segmentation_models_pytorch):
    ResNet encoder (:class:`~medzoo.models.encoders.resnet.ResNetEncoder`, output stride 16 or 8 by
    dilation) -> ASPP on the last feature map -> upsample to the stride-4 features (``layer1``), concatenated
    with their 48-channel 1x1 projection -> two 3x3 conv-norm-act -> 1x1 classifier -> bi/trilinear
    upsampling to the input size.

Differences from the paper: plain (not depthwise-separable) 3x3 convolutions in ASPP and decoder, as the
ResNet variants of the paper's public code.

Input-size rule (card): any size >= 2 x output stride (32 at the default output stride 16). The stride-2
convs round up and the logits are resized to the input size at the end, so no divisibility is needed; the
minimum keeps the deepest map at least 2 voxels per axis so BatchNorm has more than one value per channel
in train mode at batch 1. Sizes that are multiples of the output stride give the exact paper geometry.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medzoo.models.encoders.resnet import ResNetEncoder, dilation_for_output_stride
from medzoo.models.layers.aspp import ASPP, default_rates
from medzoo.models.layers.blocks import check_input_size, resize_to
from medzoo.models.layers.factories import ConvNormAct, cat_channels, make_conv
from medzoo.models.registry import ModelCard, register_model

__all__ = ["DeepLabV3Plus"]


class DeepLabV3Plus(nn.Module):
    """DeepLabv3+ for 2D or 3D.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        num_classes: output classes.
        encoder_depth: ResNet depth (18, 34, 50, 101).
        output_stride: 16 (default) or 8.
        encoder_widths: base widths of the ResNet stages (default (64, 128, 256, 512)).
        stem_channels: channels of the ResNet stem.
        aspp_channels: channels of ASPP and of the decoder (256 in the paper).
        atrous_rates: ASPP rates; default (6, 12, 18) at stride 16, (12, 24, 36) at stride 8.
        low_level_channels: projection of the stride-4 skip (48 in the paper).
        norm: normalisation ("batch" default, as the paper; "instance"/"group" for tiny batches).
        dropout: dropout after the ASPP projection.
        name: registry name used in error messages.

    Shapes:
        (B, in_channels, *S) -> (B, num_classes, *S), every S >= 2 * output_stride.
    """

    encoder_prefixes: tuple[str, ...] = ("encoder",)

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        encoder_depth: int = 50,
        output_stride: int = 16,
        encoder_widths: Sequence[int] = (64, 128, 256, 512),
        stem_channels: int = 64,
        aspp_channels: int = 256,
        atrous_rates: Sequence[int] | None = None,
        low_level_channels: int = 48,
        norm: str | None = "batch",
        dropout: float = 0.1,
        name: str = "deeplabv3plus",
    ) -> None:
        super().__init__()
        self.encoder = ResNetEncoder(
            spatial_dims, in_channels, encoder_depth, encoder_widths, stem_channels,
            dilation_for_output_stride(output_stride), norm=norm,
        )
        rates = tuple(atrous_rates) if atrous_rates is not None else default_rates(output_stride)
        self.aspp = ASPP(spatial_dims, self.encoder.out_channels[-1], aspp_channels, rates, norm, "relu",
                         dropout)
        self.low_level = ConvNormAct(spatial_dims, self.encoder.out_channels[1], low_level_channels, 1,
                                     norm=norm, act="relu")
        self.decoder = nn.Sequential(
            ConvNormAct(spatial_dims, aspp_channels + low_level_channels, aspp_channels, 3, norm=norm,
                        act="relu"),
            ConvNormAct(spatial_dims, aspp_channels, aspp_channels, 3, norm=norm, act="relu"),
        )
        self.head = make_conv(spatial_dims, aspp_channels, num_classes, 1)
        self.output_stride = output_stride
        self._rule = ModelCard(name=name, min_size=2 * output_stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(self._rule, x)
        feats = self.encoder(x)
        low = self.low_level(feats[1])
        high = resize_to(self.aspp(feats[-1]), low.shape[2:])
        out = self.head(self.decoder(cat_channels((high, low))))
        return resize_to(out, x.shape[2:])


_TINY = {"encoder_widths": (4, 8, 8, 16), "stem_channels": 4, "aspp_channels": 8, "low_level_channels": 4}


def _register(depth: int) -> None:
    name = f"deeplabv3plus_resnet{depth}"
    tiny = dict(_TINY, encoder_widths=(4, 4, 8, 8)) if depth >= 50 else dict(_TINY)

    @register_model(ModelCard(
        name=name,
        spatial_dims=(2, 3),
        paper=f"Chen et al., ECCV 2018 (DeepLabv3+), ResNet-{depth} encoder",
        size_divisor=1,
        min_size=32,
        typical_patch=(128, 128, 128),
        tiny_kwargs=tiny,
    ))
    def build(in_channels: int, num_classes: int, spatial_dims: int = 3, **kwargs) -> DeepLabV3Plus:
        return DeepLabV3Plus(spatial_dims, in_channels, num_classes, encoder_depth=depth, name=name, **kwargs)

    build.__doc__ = f"DeepLabv3+ with a ResNet-{depth} encoder (Chen et al. 2018); any size >= 32 at stride 16."


for _depth in (18, 34, 50, 101):
    _register(_depth)
