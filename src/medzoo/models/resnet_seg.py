"""ResNetMed3D: the dilated 3D ResNet segmentation networks of MedicalNet.

Paper: Chen, Ma, Zheng. "Med3D: Transfer Learning for 3D Medical Image Analysis." arXiv:1904.00625, 2019.

Architecture: the shared :class:`~medzoo.models.encoders.resnet.ResNetEncoder` (ResNet-10/18/34/50) at
output stride 8 (layer3 dilation 2, layer4 dilation 4, as MedicalNet), then MedicalNet's segmentation head
(transposed conv x2 to 32 channels, 3x3 conv, 1x1 classifier, so logits at stride 4) and trilinear
upsampling of the logits to the input size.

MedicalNet's pretrained weights (3D, key names ``module.conv1.weight``, ``module.layer1.0.conv1.weight``...)
load into the encoder with :func:`medzoo.models.transfer.load_2d_resnet_into_encoder` (3D weights are taken
as they are; 2D ImageNet weights are inflated).

Input-size rule: any size >= 16 (2 x the output stride 8, so BatchNorm sees > 1 value per channel in train
mode at batch 1); the logits are resized to the input size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medzoo.models.encoders.resnet import ResNetEncoder, dilation_for_output_stride
from medzoo.models.layers.blocks import check_input_size, resize_to
from medzoo.models.layers.factories import ConvNormAct, ConvTranspose, make_act, make_conv, make_norm
from medzoo.models.registry import ModelCard, register_model

__all__ = ["ResNetMed3D"]


class ResNetMed3D(nn.Module):
    """Dilated ResNet encoder + MedicalNet segmentation head.

    Args:
        spatial_dims: 3 (2 also works).
        in_channels: input channels.
        num_classes: output classes.
        encoder_depth: 10, 18, 34 or 50.
        encoder_widths: ResNet stage widths (default (64, 128, 256, 512)).
        stem_channels: channels of the ResNet stem.
        head_channels: channels of the segmentation head (32 in MedicalNet).
        norm: "batch" (default, as MedicalNet), "instance", "group" or None.
        name: registry name used in error messages.

    Shapes:
        (B, in_channels, *S) -> (B, num_classes, *S), every S >= 16.
    """

    encoder_prefixes: tuple[str, ...] = ("encoder",)

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_classes: int,
        encoder_depth: int = 18,
        encoder_widths: Sequence[int] = (64, 128, 256, 512),
        stem_channels: int = 64,
        head_channels: int = 32,
        norm: str | None = "batch",
        name: str = "resnetmed3d",
    ) -> None:
        super().__init__()
        self.encoder = ResNetEncoder(spatial_dims, in_channels, encoder_depth, encoder_widths, stem_channels,
                                     dilation_for_output_stride(8), norm=norm)
        self.head = nn.Sequential(
            ConvTranspose[spatial_dims](self.encoder.out_channels[-1], head_channels, 2, stride=2,
                                        bias=norm in (None, "none")),
            make_norm(norm, spatial_dims, head_channels),
            make_act("relu"),
            ConvNormAct(spatial_dims, head_channels, head_channels, 3, norm=norm, act="relu"),
            make_conv(spatial_dims, head_channels, num_classes, 1),
        )
        self._rule = ModelCard(name=name, min_size=16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(self._rule, x)
        return resize_to(self.head(self.encoder(x)[-1]), x.shape[2:])


def _register(depth: int) -> None:
    name = f"resnetmed3d_{depth}"
    widths = (4, 4, 8, 8) if depth >= 50 else (4, 8, 8, 16)

    @register_model(ModelCard(
        name=name,
        spatial_dims=(3,),
        paper=f"Chen et al., arXiv 2019 (Med3D / MedicalNet), ResNet-{depth}",
        size_divisor=1,
        min_size=16,
        typical_patch=(96, 96, 96),
        tiny_kwargs={"encoder_widths": widths, "stem_channels": 4, "head_channels": 4},
    ))
    def build(in_channels: int, num_classes: int, spatial_dims: int = 3, **kwargs) -> ResNetMed3D:
        return ResNetMed3D(spatial_dims, in_channels, num_classes, encoder_depth=depth, name=name, **kwargs)

    build.__doc__ = f"MedicalNet ResNet-{depth} segmentation net (Chen et al. 2019); any size >= 16."


for _depth in (10, 18, 34, 50):
    _register(_depth)
