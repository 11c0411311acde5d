"""DeepLabv3+, the ResNet encoder contract, ASPP, ResNetMed3D and SegResNet specifics."""

from __future__ import annotations

import math

import pytest
import torch

from medzoo.errors import InputSizeError, ModelError
from medzoo.models import create_model, get_card
from medzoo.models.encoders.resnet import ResNetEncoder, dilation_for_output_stride
from medzoo.models.layers.aspp import ASPP, default_rates

TINY = get_card("deeplabv3plus_resnet18").tiny_kwargs


@pytest.mark.parametrize(
    ("output_stride", "strides", "dilations"),
    [(32, (2, 4, 8, 16, 32), (1, 1, 1, 1, 1)), (16, (2, 4, 8, 16, 16), (1, 1, 1, 1, 2)),
     (8, (2, 4, 8, 8, 8), (1, 1, 1, 2, 4))],
)
def test_encoder_contract_strides_dilations_and_sizes(output_stride: int, strides, dilations) -> None:
    enc = ResNetEncoder(3, 2, depth=50, widths=(4, 4, 8, 8), stem_channels=4,
                        replace_stride_with_dilation=dilation_for_output_stride(output_stride))
    assert enc.strides == strides and enc.dilations == dilations and enc.output_stride == output_stride
    assert enc.out_channels == (4, 16, 16, 32, 32)  # bottleneck expansion 4
    size = (33, 18, 21)
    with torch.no_grad():
        feats = enc.eval()(torch.randn(1, 2, *size))
    assert [f.shape[1] for f in feats] == list(enc.out_channels)
    for f, s in zip(feats, strides):
        assert tuple(f.shape[2:]) == tuple(math.ceil(n / s) for n in size)
    # The dilation sits in the 3x3 convs of the last stage.
    assert enc.layer4[-1].conv2.dilation == (dilations[-1],) * 3


def test_encoder_rejects_unknown_depth_and_stride() -> None:
    with pytest.raises(ModelError, match="depth"):
        ResNetEncoder(3, 1, depth=19)
    with pytest.raises(ModelError, match="output_stride"):
        dilation_for_output_stride(4)


def test_aspp_rates_follow_output_stride_and_batch1_train_works() -> None:
    assert default_rates(16) == (6, 12, 18) and default_rates(8) == (12, 24, 36)
    assert create_model("deeplabv3plus_resnet18", in_channels=1, num_classes=2, **TINY).aspp.rates == (6, 12, 18)
    net8 = create_model("deeplabv3plus_resnet18", in_channels=1, num_classes=2, output_stride=8, **TINY)
    assert net8.aspp.rates == (12, 24, 36)
    # Image pooling has no BatchNorm, so a batch of one works in train mode (pooled map is 1x1x1).
    aspp = ASPP(3, 8, 6, rates=(1, 2)).train()
    out = aspp(torch.randn(1, 8, 2, 3, 2))
    assert out.shape == (1, 6, 2, 3, 2)
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in aspp.pooling.modules())


@pytest.mark.parametrize("dims", [2, 3])
def test_deeplab_any_size_above_minimum_batch1_train(dims: int) -> None:
    net = create_model("deeplabv3plus_resnet18", in_channels=2, num_classes=4, spatial_dims=dims, **TINY)
    size = (32, 45, 37)[:dims]
    out = net.train()(torch.randn(1, 2, *size))
    assert out.shape == (1, 4, *size)
    out.mean().backward()
    assert net.encoder.conv1.weight.grad is not None


def test_deeplab_size_error_names_minimum() -> None:
    net = create_model("deeplabv3plus_resnet34", in_channels=1, num_classes=2, **TINY).eval()
    with pytest.raises(InputSizeError, match=r"nearest valid size is \(32, 40, 32\)"):
        net(torch.randn(1, 1, 31, 40, 20))


def test_deeplab_decoder_uses_48_channel_low_level_skip() -> None:
    with torch.device("meta"):
        net = create_model("deeplabv3plus_resnet50", in_channels=1, num_classes=3, spatial_dims=2)
    assert net.low_level[0].in_channels == 256 and net.low_level[0].out_channels == 48  # layer1 of ResNet-50
    assert net.decoder[0][0].in_channels == 256 + 48
    assert net.aspp.branches[0][0].in_channels == 2048


def test_resnetmed3d_is_dilated_stride8() -> None:
    net = create_model("resnetmed3d_18", in_channels=1, num_classes=2, **get_card("resnetmed3d_18").tiny_kwargs)
    assert net.encoder.output_stride == 8 and net.encoder.dilations[-2:] == (2, 4)
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 1, 16, 23, 17)).shape == (1, 2, 16, 23, 17)
    with pytest.raises(InputSizeError, match=r"\(16, 23, 17\)"):
        net(torch.randn(1, 1, 15, 23, 17))


def test_segresnet_encoder_is_reusable_and_odd_sizes_work() -> None:
    from medzoo.models.segresnet import SegResNetEncoder

    enc = SegResNetEncoder(3, 2, init_filters=4, blocks_down=(1, 1, 1))
    feats = enc(torch.randn(1, 2, 9, 13, 10))
    assert [tuple(f.shape[1:]) for f in feats] == [(4, 9, 13, 10), (8, 5, 7, 5), (16, 3, 4, 3)]
    net = create_model("segresnet", in_channels=2, num_classes=3, init_filters=4, blocks_up=(1, 1, 1))
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 2, 9, 13, 10)).shape == (1, 3, 9, 13, 10)
    with pytest.raises(ModelError, match="blocks_up"):
        create_model("segresnet", in_channels=1, num_classes=2, blocks_up=(1, 1))
