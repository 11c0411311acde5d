"""Transfer learning: matching-weight loads, freezing, 2D -> 3D inflation and the ResNet weight loader."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from medzoo.errors import CheckpointError, ModelError
from medzoo.models import create_model
from medzoo.models.encoders.resnet import ResNetEncoder
from medzoo.models.transfer import (
    freeze,
    inflate_2d_to_3d,
    load_2d_resnet_into_encoder,
    load_matching_weights,
    unfreeze,
)

TINY = {"encoder_widths": (4, 8, 8, 16), "stem_channels": 4}


class _NotATensor:
    """A pickled instance of this class must be refused by the weights-only loader."""


@pytest.mark.parametrize(("kernel", "stride", "axis"), [(3, 1, 0), (7, 2, 0), (3, 1, 2), (1, 1, 1)])
def test_inflated_conv_equals_2d_conv_on_every_slice(kernel: int, stride: int, axis: int) -> None:
    g = torch.Generator().manual_seed(0)
    w2 = torch.randn(5, 3, kernel, kernel, generator=g)
    x2 = torch.randn(1, 3, 12, 10, generator=g)
    w3 = inflate_2d_to_3d({"conv.weight": w2}, axis=axis)["conv.weight"]
    assert w3.shape[2 + axis] == kernel and w3.dim() == 5
    depth = 3 * kernel + 2
    x3 = x2.unsqueeze(2 + axis).expand(*x2.shape[:2 + axis], depth, *x2.shape[2 + axis:]).contiguous()
    pad = kernel // 2
    y2 = F.conv2d(x2, w2, stride=stride, padding=pad)
    # Stride 1 along the new axis so every slice can be compared; same stride as 2D on the others.
    strides = [stride, stride]
    strides.insert(axis, 1)
    y3 = F.conv3d(x3, w3, stride=tuple(strides), padding=pad)
    interior = range(pad, depth - pad)  # the zero padding of the new axis cuts the sum at its borders
    for d in interior:
        torch.testing.assert_close(y3.select(2 + axis, d), y2, atol=1e-5, rtol=1e-5)
    # At the border the sum is cut: the output differs (proves the comparison above is not vacuous).
    if pad:
        assert not torch.allclose(y3.select(2 + axis, 0), y2, atol=1e-3)


def test_inflate_copies_non_conv_tensors_and_respects_depth() -> None:
    sd = {"bn1.weight": torch.rand(4), "bn1.running_var": torch.rand(4), "conv1.weight": torch.rand(4, 1, 3, 3)}
    out = inflate_2d_to_3d(sd, depth=1)
    assert out["conv1.weight"].shape == (4, 1, 1, 3, 3)
    torch.testing.assert_close(out["conv1.weight"][:, :, 0], sd["conv1.weight"])
    assert torch.equal(out["bn1.running_var"], sd["bn1.running_var"])
    assert out["bn1.weight"] is not sd["bn1.weight"]  # copied, not shared


def _torchvision_like_state_dict() -> dict[str, torch.Tensor]:
    """A 2D ResNet-18 (tiny widths) state dict with torchvision key names, an fc layer and DataParallel prefix."""
    torch.manual_seed(0)
    enc2 = ResNetEncoder(2, 3, depth=18, widths=(4, 8, 8, 16), stem_channels=4)
    for m in enc2.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    sd = {f"module.{k}": v for k, v in enc2.state_dict().items()}
    sd["module.fc.weight"] = torch.randn(10, 16)
    sd["module.fc.bias"] = torch.randn(10)
    return sd


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_load_2d_resnet_into_3d_model(tmp_path, fmt: str) -> None:
    sd = _torchvision_like_state_dict()
    path = tmp_path / f"resnet18.{fmt}"
    if fmt == "pt":
        torch.save({"state_dict": sd}, path)
    else:
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    model = create_model("deeplabv3plus_resnet18", in_channels=1, num_classes=3, spatial_dims=3,
                         aspp_channels=8, low_level_channels=4, **TINY)
    report = load_2d_resnet_into_encoder(model, path)
    assert not report.shape_mismatched and not report.missing and not report.unexpected
    assert len(report.matched) == len(model.encoder.state_dict())
    enc = model.encoder
    # Stem: RGB summed to one channel, then inflated (divided by the depth 7).
    expected = sd["module.conv1.weight"].sum(1, keepdim=True).unsqueeze(2).repeat(1, 1, 7, 1, 1) / 7
    torch.testing.assert_close(enc.conv1.weight, expected)
    torch.testing.assert_close(enc.layer2[0].downsample[1].running_var, sd["module.layer2.0.downsample.1.running_var"])
    torch.testing.assert_close(enc.layer1[1].conv2.weight[:, :, 1], sd["module.layer1.1.conv2.weight"] / 3)


def test_loaded_3d_stem_reproduces_2d_stem_on_constant_depth(tmp_path) -> None:
    sd = _torchvision_like_state_dict()
    path = tmp_path / "w.pt"
    torch.save(sd, path)
    enc2 = ResNetEncoder(2, 3, depth=18, widths=(4, 8, 8, 16), stem_channels=4)
    enc2.load_state_dict({k.removeprefix("module."): v for k, v in sd.items() if "fc." not in k})
    enc3 = ResNetEncoder(3, 3, depth=18, widths=(4, 8, 8, 16), stem_channels=4)
    load_2d_resnet_into_encoder(enc3, path)
    enc2.eval()
    enc3.eval()
    x2 = torch.randn(1, 3, 16, 20)
    x3 = x2.unsqueeze(2).expand(1, 3, 16, 16, 20).contiguous()
    with torch.no_grad():
        y2 = enc2.bn1(enc2.conv1(x2))
        y3 = enc3.bn1(enc3.conv1(x3))  # depth 16 -> 8 slices; slices 2..5 are away from the borders
    for d in range(2, 6):
        torch.testing.assert_close(y3[:, :, d], y2, atol=1e-5, rtol=1e-4)


def test_load_refuses_unsafe_or_missing_files(tmp_path) -> None:
    bad = tmp_path / "evil.pt"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _NotATensor()}, bad)
    enc = ResNetEncoder(3, 1, depth=18, widths=(4, 8, 8, 16), stem_channels=4)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_2d_resnet_into_encoder(enc, bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_2d_resnet_into_encoder(enc, tmp_path / "absent.pt")
    with pytest.raises(ModelError, match="no ResNet encoder"):
        load_2d_resnet_into_encoder(create_model("segresnet", in_channels=1, num_classes=2), bad)


def test_load_matching_weights_reports_every_kind(caplog) -> None:
    src = create_model("resnetmed3d_10", in_channels=1, num_classes=3, encoder_widths=(4, 8, 8, 16),
                       stem_channels=4, head_channels=4)
    dst = create_model("resnetmed3d_10", in_channels=1, num_classes=5, encoder_widths=(4, 8, 8, 16),
                       stem_channels=4, head_channels=4)
    sd = dict(src.state_dict())
    sd["extra.weight"] = torch.zeros(2)
    del sd["encoder.conv1.weight"]
    with caplog.at_level("WARNING", logger="medzoo.models.transfer"):
        report = load_matching_weights(dst, sd)
    assert set(report.shape_mismatched) == {"head.4.weight", "head.4.bias"}
    assert report.shape_mismatched["head.4.weight"][0][0] == 5
    assert report.missing == ["encoder.conv1.weight"]
    assert report.unexpected == ["extra.weight"]
    assert len(report.matched) == len(sd) - 3
    assert torch.equal(dst.encoder.layer4[0].conv1.weight, src.encoder.layer4[0].conv1.weight)
    assert "shape-mismatched" in caplog.text


@pytest.mark.parametrize("name", ["unet3d", "segresnet", "deeplabv3plus_resnet18", "resnetmed3d_10"])
def test_freeze_encoder_keeps_encoder_weights_during_training(name: str) -> None:
    from medzoo.models import get_card

    card = get_card(name)
    net = create_model(name, in_channels=1, num_classes=2, **card.tiny_kwargs)
    assert net.encoder_prefixes == ("encoder",)
    frozen = freeze(net, "encoder")
    assert frozen and all(n.startswith("encoder.") for n in frozen)
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert trainable and not any(n.startswith("encoder.") for n in trainable)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    size = max(card.min_size, card.size_divisor, 16)
    net.train()(torch.randn(2, 1, size, size, size)).square().mean().backward()
    opt.step()
    after = dict(net.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in frozen)
    assert any(not torch.equal(before[n], after[n]) for n in trainable)
    assert unfreeze(net, "encoder") == frozen
    assert all(p.requires_grad for p in net.parameters())
    with pytest.raises(ModelError, match="no parameter"):
        freeze(net, "nothing_here")
