"""Model-specific behaviour of the MedicalZooPytorch networks (the registry-wide checks are in test_models_zoo).

Each case fixes a known failure of the original code: VNet crashing for 2/4 channels, HyperDenseNet being
a class per modality count, dense nets shrinking the output, tuples returned to the trainer.
"""

from __future__ import annotations

import pytest
import torch

from medzoo.errors import InputSizeError, ModelError
from medzoo.models import create_model, get_card


def _tiny(name: str, in_channels: int, num_classes: int, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    kwargs = {**get_card(name).tiny_kwargs, **extra}
    return create_model(name, in_channels=in_channels, num_classes=num_classes, **kwargs)


@pytest.mark.parametrize("in_channels", [1, 2, 4])
def test_vnet_any_in_channels(in_channels: int) -> None:
    # The original VNet repeats the input 16 times: only valid for one channel.
    for name in ("vnet", "vnet_light"):
        net = _tiny(name, in_channels, 3).eval()
        with torch.no_grad():
            out = net(torch.randn(1, in_channels, 16, 32, 16))
        assert out.shape == (1, 3, 16, 32, 16)
    # Paper path for one channel: the first-stage residual is a parameter-free repeat (no projection conv).
    net = create_model("vnet", in_channels=1, num_classes=2, base_channels=4)
    assert net.inp.repeats == 4 and not any(p.numel() for p in net.inp.project.parameters())
    net3 = create_model("vnet", in_channels=3, num_classes=2, base_channels=4)
    assert net3.inp.repeats == 0 and sum(p.numel() for p in net3.inp.project.parameters()) == 3 * 4


def test_vnet_size_error_names_nearest_valid_size() -> None:
    net = _tiny("vnet", 1, 2).eval()
    with pytest.raises(InputSizeError, match=r"nearest valid size is \(32, 16, 48\)"):
        net(torch.randn(1, 1, 17, 16, 40))


@pytest.mark.parametrize("modalities", [1, 2, 3, 4])
def test_hyperdensenet_one_path_per_modality(modalities: int) -> None:
    widths = (3, 4)
    net = _tiny("hyperdensenet", modalities, 3, widths=widths, head=(6,)).eval()
    assert len(net.layers) == len(widths) and all(len(row) == modalities for row in net.layers)
    # Layer 2 of every path reads the first-layer outputs of all paths (hyper-dense connectivity).
    assert net.layers[1][0][-1].in_channels == modalities * widths[0]
    x = torch.randn(2, modalities, 9, 11, 7)
    with torch.no_grad():
        out = net(x)
    assert out.shape == (2, 3, 9, 11, 7)
    if modalities > 1:
        # Changing only the last modality changes the output: information flows across paths.
        y = x.clone()
        y[:, -1] += 1.0
        with torch.no_grad():
            assert not torch.allclose(net(y), out)


@pytest.mark.parametrize(
    "name",
    ["hyperdensenet", "densenet3d_singlepath", "densenet3d_dualpath", "densenet3d_dualsingle", "highresnet3d"],
)
def test_full_resolution_nets_keep_odd_sizes(name: str) -> None:
    net = _tiny(name, 3, 4).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 7, 9, 5))
    assert out.shape == (1, 4, 7, 9, 5)


def test_dualpath_splits_channels_and_single_channel_feeds_both_paths() -> None:
    net = _tiny("densenet3d_dualpath", 3, 2)
    assert net.groups == [(0, 2), (2, 3)]
    net1 = _tiny("densenet3d_dualpath", 1, 2).eval()
    assert net1.groups == [(0, 1), (0, 1)]
    with torch.no_grad():
        assert net1(torch.randn(1, 1, 5, 6, 7)).shape == (1, 2, 5, 6, 7)
    with pytest.raises(ModelError, match="fusion"):
        create_model("densenet3d_dualpath", in_channels=2, num_classes=2, fusion="max")


def test_dualsingle_has_one_early_layer_per_modality() -> None:
    assert len(_tiny("densenet3d_dualsingle", 5, 2).early) == 5


@pytest.mark.parametrize("name", ["densevoxelnet", "skipdensenet3d"])
def test_downsampling_dense_nets_keep_size_and_reject_bad_sizes(name: str) -> None:
    card = get_card(name)
    net = _tiny(name, 2, 3).eval()
    size = (card.valid_size(17), card.valid_size(20), card.valid_size(9))
    with torch.no_grad():
        assert net(torch.randn(1, 2, *size)).shape == (1, 3, *size)
    with pytest.raises(InputSizeError, match="nearest valid size"):
        net(torch.randn(1, 2, 17, 20, 9))


def test_densevoxelnet_deep_supervision_only_in_train_mode() -> None:
    net = _tiny("densevoxelnet", 1, 3, deep_supervision=True)
    outs = net.train()(torch.randn(2, 1, 8, 12, 16))
    assert isinstance(outs, list) and [o.shape for o in outs] == [(2, 3, 8, 12, 16)] * 2
    with torch.no_grad():
        out = net.eval()(torch.randn(1, 1, 8, 12, 16))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 3, 8, 12, 16)
    # Without deep supervision the auxiliary head is not built (no unused parameters) and train mode gives
    # a tensor.
    plain = _tiny("densevoxelnet", 1, 3)
    assert plain.aux is None and isinstance(plain.train()(torch.randn(2, 1, 8, 8, 8)), torch.Tensor)


def test_skipdensenet_any_class_count() -> None:
    # The original grouped transposed convs need the block width to be a multiple of num_classes.
    for k in (2, 3, 5, 7):
        net = _tiny("skipdensenet3d", 1, k).eval()
        with torch.no_grad():
            assert net(torch.randn(1, 1, 16, 16, 32)).shape == (1, k, 16, 16, 32)


def test_resnet_vae_auxiliary_loss() -> None:
    net = _tiny("resnet3d_vae", 2, 3).train()
    x = torch.randn(2, 2, 16, 8, 24)
    out = net(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, 16, 8, 24)
    aux = net.auxiliary_loss()
    assert aux is not None and aux.ndim == 0 and torch.isfinite(aux) and aux.item() > 0
    aux.backward()
    for module in (net.vae_mu, net.vae_logvar, net.vae_out):
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0
    # The regulariser does not reach the segmentation head.
    assert net.head[-1].weight.grad is None
    net.eval()
    assert net.auxiliary_loss() is None
    with torch.no_grad():
        assert net(x).shape == (2, 3, 16, 8, 24)
    assert net.auxiliary_loss() is None


def test_resnet_vae_eval_skips_vae_branch() -> None:
    net = _tiny("resnet3d_vae", 1, 2).eval()
    calls = []
    net.vae_down.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        net(torch.randn(1, 1, 8, 8, 8))
    assert not calls
    net.train()(torch.randn(2, 1, 8, 8, 8))
    assert calls == [1]


def test_resnet_vae_regulariser_weights() -> None:
    torch.manual_seed(0)
    net = _tiny("resnet3d_vae", 1, 2, l2_weight=0.0, kl_weight=0.0).train()
    net(torch.randn(2, 1, 8, 8, 8))
    assert net.auxiliary_loss().item() == 0.0


def test_classifier_any_input_size() -> None:
    net = _tiny("simple3dcnn", 2, 4).eval()
    assert get_card("simple3dcnn").task == "classification"
    with torch.no_grad():
        a = net(torch.randn(3, 2, 17, 20, 9))
        b = net(torch.randn(1, 2, 32, 11, 24))
    assert a.shape == (3, 4) and b.shape == (1, 4)
    with pytest.raises(ModelError, match="num_classes"):
        create_model("simple3dcnn", in_channels=1, num_classes=1)
