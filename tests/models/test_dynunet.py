"""dynunet: shapes, sizes, deep supervision, the nnU-Net planner rule, and equality with nnU-Net's network."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medzoo.errors import InputSizeError, ModelError
from medzoo.models import create_model, get_card
from medzoo.models.dynunet import DynUNet, dynunet_config_for

TINY = (4, 8, 16)


def _copy_by_order(src: nn.Module, dst: nn.Module) -> None:
    """Copy parameters one to one in registration order (the shapes must match pairwise).

    Without deep supervision medzoo builds only the full-resolution head, while the peer always builds one per
    decoder stage: the peer's unused lower heads are left out of the pairing.
    """
    named = list(src.named_parameters())
    dst_params = list(dst.parameters())
    if len(named) != len(dst_params):
        heads = sorted({n.split(".")[2] for n, _ in named if n.startswith("decoder.seg_layers.")}, key=int)
        named = [(n, p) for n, p in named
                 if not (n.startswith("decoder.seg_layers.") and n.split(".")[2] != heads[-1])]
    src_params = [p for _, p in named]
    assert len(src_params) == len(dst_params)
    with torch.no_grad():
        for i, (s, d) in enumerate(zip(src_params, dst_params)):
            assert d.shape == s.shape, f"parameter {i}: {tuple(d.shape)} vs {tuple(s.shape)}"
            d.copy_(s)


@pytest.mark.parametrize("spatial_dims, shape", [(3, (2, 1, 16, 24, 8)), (2, (2, 2, 32, 16))])
def test_shapes_and_eval_tensor(spatial_dims: int, shape: tuple[int, ...]) -> None:
    net = create_model("dynunet", in_channels=shape[1], num_classes=3, spatial_dims=spatial_dims,
                       features=TINY, deep_supervision=True)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    net.train()
    outs = net(x)
    assert isinstance(outs, list) and len(outs) == len(TINY) - 1
    assert outs[0].shape == (shape[0], 3, *shape[2:])
    assert outs[1].shape == (shape[0], 3, *(s // 2 for s in shape[2:]))
    net.eval()
    with torch.no_grad():
        out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == (shape[0], 3, *shape[2:])


def test_anisotropic_strides_size_rule() -> None:
    net = DynUNet(1, 2, 3, features=TINY, kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]],
                  strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]])
    assert net.size_divisors == (2, 4, 4)
    assert net(torch.randn(1, 1, 6, 12, 8)).shape == (1, 2, 6, 12, 8)
    with pytest.raises(InputSizeError, match=r"nearest valid size is \(6, 12, 12\)"):
        net(torch.randn(1, 1, 6, 12, 10))


def test_card_and_bad_arguments() -> None:
    card = get_card("dynunet")
    assert card.size_divisor == 16 and 2 in card.spatial_dims and "Isensee" in card.paper
    with pytest.raises(ModelError):
        DynUNet(1, 2, 3, features=(4, 8), strides=[1, 2, 2])
    with pytest.raises(ModelError):
        DynUNet(1, 2, 3, features=(4, 8), kernel_sizes=[3, 4])


def test_config_for_hippocampus_matches_nnunet_plan() -> None:
    cfg = dynunet_config_for((40, 56, 40), (1.0, 1.0, 1.0))
    assert cfg.strides == ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2))
    assert cfg.kernel_sizes == ((3, 3, 3),) * 4
    assert cfg.features == (32, 64, 128, 256)
    assert cfg.patch_size == (40, 56, 40)


def test_config_for_anisotropic_uses_flat_kernels_on_coarse_axis() -> None:
    cfg = dynunet_config_for((20, 192, 160), (5.0, 0.8, 0.8), max_features=320)
    assert cfg.kernel_sizes[0] == (1, 3, 3)
    assert cfg.strides[1] == (1, 2, 2)
    assert max(cfg.features) == 320
    assert all(p % d == 0 for p, d in zip(cfg.patch_size, cfg.size_divisors))
    kwargs = cfg.model_kwargs()
    net = create_model("dynunet", in_channels=1, num_classes=2, **{**kwargs, "features": [2] * len(cfg.features)})
    assert net.size_divisors == cfg.size_divisors
    # a patch that is not a multiple is rounded up
    assert dynunet_config_for((41, 56, 40), (1.0, 1.0, 1.0)).patch_size == (48, 56, 40)


@pytest.mark.parametrize("conv_bias", [True, False])
@pytest.mark.parametrize("deep_supervision", [False, True])
def test_equals_plain_conv_unet(conv_bias: bool, deep_supervision: bool) -> None:
    unet = pytest.importorskip("dynamic_network_architectures.architectures.unet")
    features, kernels = (4, 8, 16, 16), [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2]]
    torch.manual_seed(0)
    ref = unet.PlainConvUNet(
        2, len(features), features, nn.Conv3d, kernels, strides, 2, 3, 2, conv_bias=conv_bias,
        norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=deep_supervision,
    )
    ours = DynUNet(2, 3, 3, features=features, kernel_sizes=kernels, strides=strides,
                   deep_supervision=deep_supervision, conv_bias=conv_bias)
    # randomise the norm affines too, so a wrong order could not hide behind ones/zeros
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape) * 0.3)
    _copy_by_order(ref, ours)
    x = torch.randn(2, 2, 8, 16, 24, generator=torch.Generator().manual_seed(1))
    ref.train()
    ours.train()
    a, b = ref(x), ours(x)
    a = a if isinstance(a, list) else [a]
    b = b if isinstance(b, list) else [b]
    assert len(a) == len(b) == (3 if deep_supervision else 1)
    for ra, rb in zip(a, b):
        torch.testing.assert_close(rb, ra, atol=1e-5, rtol=1e-5)


def test_residual_equals_residual_encoder_unet() -> None:
    unet = pytest.importorskip("dynamic_network_architectures.architectures.unet")
    features = (4, 8, 16)
    torch.manual_seed(0)
    ref = unet.ResidualEncoderUNet(
        1, 3, features, nn.Conv3d, 3, [1, 2, 2], 1, 2, 2, conv_bias=True,
        norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
    )
    ours = DynUNet(1, 2, 3, features=features, residual=True)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape) * 0.3)
    _copy_by_order(ref, ours)
    x = torch.randn(1, 1, 12, 8, 16, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def test_trains_one_step() -> None:
    net = create_model("dynunet", in_channels=1, num_classes=2, features=TINY, residual=True)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(2, 1, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    losses = []
    for _ in range(3):
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
