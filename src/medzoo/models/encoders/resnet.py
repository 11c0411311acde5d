"""One dimension-generic ResNet encoder (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

Used by DeepLabv3+ (:mod:`medzoo.models.deeplab`) and ResNetMed3D (:mod:`medzoo.models.resnet_seg`).

Encoder contract (what every consumer may rely on):
    - ``forward(x)`` with ``x`` (B, in_channels, *S) returns a list of 5 feature maps, finest first:
      ``[stem, layer1, layer2, layer3, layer4]``.
    - ``out_channels``: channels of those 5 maps, e.g. ResNet-50: (64, 256, 512, 1024, 2048);
      ResNet-18/34: (64, 64, 128, 256, 512).
    - ``strides``: their cumulative downsampling, (2, 4, 8, 16, 32) without dilation; each feature has
      spatial size ``ceil(S / stride)`` (all convs use "same" padding, so any input size works).
    - ``dilations``: the dilation used inside each map's last block, (1, 1, 1, 1, 1) without dilation.
    - ``output_stride``: ``strides[-1]``.
    - ``replace_stride_with_dilation=(l2, l3, l4)`` (as torchvision) swaps the stride 2 of layer2/3/4 for a
      dilation (doubling per replaced stage): (False, False, True) -> output stride 16 (layer4 dilation 2);
      (False, True, True) -> output stride 8 (layer3 dilation 2, layer4 dilation 4, as MedicalNet).
      :func:`dilation_for_output_stride` gives the tuple for a wanted output stride.

Module and parameter names follow torchvision's ``resnet`` (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.downsample.0`` ...) so 2D ImageNet weights map onto it one-to-one (see
:func:`medzoo.models.transfer.load_2d_resnet_into_encoder`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medzoo.errors import ModelError
from medzoo.models.layers.blocks import BasicBlock, Bottleneck
from medzoo.models.layers.factories import MaxPool, make_act, make_conv, make_norm

__all__ = ["RESNET_SPECS", "ResNetEncoder", "dilation_for_output_stride"]

#: depth -> (block, blocks per stage)
RESNET_SPECS: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    10: (BasicBlock, (1, 1, 1, 1)),
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}


def dilation_for_output_stride(output_stride: int) -> tuple[bool, bool, bool]:
    """``replace_stride_with_dilation`` reaching ``output_stride`` 32, 16 or 8."""
    table = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}
    if output_stride not in table:
        raise ModelError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    return table[output_stride]


class ResNetEncoder(nn.Module):
    """ResNet-10/18/34/50/101/152 feature extractor for 2D or 3D (no pooling head, no classifier).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        depth: 10, 18, 34, 50, 101 or 152.
        widths: base channels of layer1..layer4 (multiplied by the block expansion, 4 for bottlenecks).
        stem_channels: channels of the 7x7 stem conv.
        replace_stride_with_dilation: see the module docstring.
        norm: "batch" (default; needed to load ImageNet/MedicalNet weights), "instance", "group" or None.
        act: activation name.

    Shapes:
        (B, in_channels, *S) -> list of 5 tensors (B, out_channels[i], *ceil(S / strides[i])).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        depth: int = 50,
        widths: Sequence[int] = (64, 128, 256, 512),
        stem_channels: int = 64,
        replace_stride_with_dilation: Sequence[bool] = (False, False, False),
        norm: str | None = "batch",
        act: str | None = "relu",
    ) -> None:
        super().__init__()
        if depth not in RESNET_SPECS:
            raise ModelError(f"ResNet depth must be one of {sorted(RESNET_SPECS)}, got {depth}")
        if len(widths) != 4 or len(replace_stride_with_dilation) != 3:
            raise ModelError("widths needs 4 entries and replace_stride_with_dilation 3")
        block, layers = RESNET_SPECS[depth]
        self.spatial_dims = spatial_dims
        self.depth = depth
        self._norm, self._act = norm, act
        self.conv1 = make_conv(spatial_dims, in_channels, stem_channels, 7, stride=2,
                               bias=norm in (None, "none"))
        self.bn1 = make_norm(norm, spatial_dims, stem_channels)
        self.relu = make_act(act)
        self.maxpool = MaxPool[spatial_dims](kernel_size=3, stride=2, padding=1)
        self._inplanes = stem_channels
        self._dilation = 1
        strides, dilations = [2, 4], [1, 1]
        dilate = (False, *replace_stride_with_dilation)
        for i, (w, n) in enumerate(zip(widths, layers)):
            stride = 1 if i == 0 else 2
            layer = self._make_layer(block, w, n, stride, dilate[i])
            self.add_module(f"layer{i + 1}", layer)
            if i > 0:
                strides.append(strides[-1] * (1 if dilate[i] else 2))
                dilations.append(self._dilation)
        self.out_channels: tuple[int, ...] = (stem_channels, *(w * block.expansion for w in widths))
        self.strides: tuple[int, ...] = tuple(strides)
        self.dilations: tuple[int, ...] = tuple(dilations)
        self.output_stride = self.strides[-1]
        self._init_weights()

    def _make_layer(self, block: type[nn.Module], width: int, blocks: int, stride: int,
                    dilate: bool) -> nn.Sequential:
        sd, norm = self.spatial_dims, self._norm
        previous_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        out = width * block.expansion  # type: ignore[attr-defined]
        downsample = None
        if stride != 1 or self._inplanes != out:
            downsample = nn.Sequential(
                make_conv(sd, self._inplanes, out, 1, stride=stride, bias=norm in (None, "none")),
                make_norm(norm, sd, out),
            )
        mods = [block(sd, self._inplanes, width, stride, previous_dilation, norm, self._act, downsample)]
        self._inplanes = out
        mods += [block(sd, out, width, 1, self._dilation, norm, self._act) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem = self.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(self.maxpool(stem))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [stem, f1, f2, f3, f4]
