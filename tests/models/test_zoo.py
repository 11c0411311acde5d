"""One parametrized test over the whole registry (every engineer's models are covered automatically).

Each model is built from its card's ``tiny_kwargs`` and fed odd, non-cubic sizes valid for its size rule:
output shape, finiteness, a gradient for every parameter, the input-size error, a state_dict round trip,
and TorchScript + ONNX export checked against PyTorch for every card that says ``exportable``.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch

from medzoo.errors import InputSizeError
from medzoo.models import ModelCard, count_parameters, create_model, get_card, list_models

MODELS = list_models()
# (in_channels, num_classes): covers in_channels 1/2/4 and num_classes 2/3/5 without the full product.
COMBOS = ((1, 2), (2, 5), (4, 3))


def _test_size(card: ModelCard, dims: int) -> tuple[int, ...]:
    """Odd (or at least non-cubic) spatial sizes valid for the card's rule."""
    if card.size_divisor > 1:
        d = card.size_divisor
        base = max(card.min_size, d)
        sizes = [card.valid_size(base + k * d) for k in (1, 0, 2)]  # e.g. 16x8x24 for "multiple of 8"
    else:
        base = max(card.min_size, 16)
        sizes = [card.valid_size(base + o) for o in (3, 5, 1)]
    return tuple(sizes[:dims])


def _build(name: str, dims: int, in_channels: int, num_classes: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    card = get_card(name)
    return create_model(name, in_channels=in_channels, num_classes=num_classes, spatial_dims=dims,
                        **card.tiny_kwargs)


def _expected_shape(card: ModelCard, batch: int, num_classes: int, size: tuple[int, ...]) -> tuple[int, ...]:
    if card.task == "classification":
        return (batch, num_classes)
    return (batch, num_classes, *size)


def _cases() -> list[tuple[str, int, int, int]]:
    """(name, dims, in_channels, num_classes) for the eval-mode shape checks.

    The first combo at the main dims is the train-mode case (:func:`test_train_forward_backward`); the
    other two run in eval mode without gradients, one of them at each other supported dims.
    """
    out = []
    for name in MODELS:
        dims = get_card(name).spatial_dims
        # (2, 5) at the other dims when there are some (else at the main dims), (4, 3) at the main dims.
        out += [(name, d, *COMBOS[1]) for d in dims[:-1]] or [(name, dims[-1], *COMBOS[1])]
        out.append((name, dims[-1], *COMBOS[2]))
    return out


def _primary(name: str) -> int:
    return get_card(name).spatial_dims[-1]


def test_registry_is_populated_and_cards_are_complete() -> None:
    assert {"unet3d", "unet2d", "segresnet", "deeplabv3plus_resnet50", "resnetmed3d_18"} <= set(MODELS)
    for name in MODELS:
        card = get_card(name)
        assert card.name == name
        assert card.paper, f"{name}: card has no paper"
        assert card.task in ("segmentation", "classification")
        assert all(d in (2, 3) for d in card.spatial_dims), name
        assert all(card.valid_size(s) == s for s in card.typical_patch), f"{name}: typical_patch breaks rule"
        if not card.exportable:
            assert card.export_note, f"{name}: not exportable but export_note is empty"


@pytest.mark.parametrize("name", MODELS)
def test_train_forward_backward(name: str) -> None:
    card = get_card(name)
    dims = _primary(name)
    in_channels, num_classes = COMBOS[0]
    net = _build(name, dims, in_channels, num_classes).train()
    size = _test_size(card, dims)
    out = net(torch.randn(2, in_channels, *size))
    assert isinstance(out, torch.Tensor), f"{name}: train-mode output must be a tensor by default"
    assert out.shape == _expected_shape(card, 2, num_classes, size)
    assert torch.isfinite(out).all()
    loss = out.float().sum()
    aux = net.auxiliary_loss() if hasattr(net, "auxiliary_loss") else None
    if aux is not None:
        assert torch.isfinite(aux)
        loss = loss + aux
    loss.backward()
    no_grad = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"{name}: parameters without gradient: {no_grad[:5]}"
    bad = [n for n, p in net.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"{name}: non-finite gradients in {bad[:5]}"


@pytest.mark.parametrize(("name", "dims", "in_channels", "num_classes"), _cases())
def test_eval_forward_shapes(name: str, dims: int, in_channels: int, num_classes: int) -> None:
    card = get_card(name)
    net = _build(name, dims, in_channels, num_classes).eval()
    size = _test_size(card, dims)
    with torch.no_grad():
        out = net(torch.randn(1, in_channels, *size))
    assert isinstance(out, torch.Tensor)
    assert out.shape == _expected_shape(card, 1, num_classes, size)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
def test_channels_last_eval_matches_the_default_layout(name: str) -> None:
    """``medzoo predict`` (and ``--memory-format channels_last`` on any model) runs networks in channels-last:
    in eval mode on odd sizes every model gives the default layout's output, up to float rounding."""
    card = get_card(name)
    dims = card.spatial_dims[-1]
    net = _build(name, dims, 2, 3).eval()
    fmt = torch.channels_last_3d if dims == 3 else torch.channels_last
    x = torch.randn(2, 2, *_test_size(card, dims))
    with torch.no_grad():
        ref = net(x)
        out = net.to(memory_format=fmt)(x.contiguous(memory_format=fmt))
    assert out.shape == ref.shape
    scale = float(ref.abs().max()) + 1e-6
    assert float((out - ref).abs().max()) <= 1e-4 * scale, f"{name}: channels-last output differs"


@pytest.mark.parametrize("name", MODELS)
def test_invalid_size_raises_input_size_error(name: str) -> None:
    card = get_card(name)
    if card.size_divisor <= 1 and card.min_size <= 1:
        pytest.skip("any size is valid")
    dims = _primary(name)
    size = list(_test_size(card, dims))
    size[0] = size[0] + 1 if card.size_divisor > 1 else card.min_size - 1
    net = _build(name, dims, 1, 2).eval()
    # The tiny variant may have a looser rule than the card (fewer levels), so only the message is checked.
    with pytest.raises(InputSizeError, match="nearest valid size"):
        with torch.no_grad():
            net(torch.randn(1, 1, *size))


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_round_trip(name: str, tmp_path) -> None:
    dims = _primary(name)
    card = get_card(name)
    net = _build(name, dims, 2, 3, seed=0)
    # One training step on random data so BatchNorm running statistics are not at their defaults.
    net.train()(torch.randn(2, 2, *_test_size(card, dims)))
    path = tmp_path / "weights.pt"
    torch.save(net.state_dict(), path)
    other = _build(name, dims, 2, 3, seed=1)
    other.load_state_dict(torch.load(path, weights_only=True))
    x = torch.randn(1, 2, *_test_size(card, dims))
    with torch.no_grad():
        a, b = net.eval()(x), other.eval()(x)
    assert torch.equal(a, b)


def _check_exports(net: torch.nn.Module, x: torch.Tensor) -> None:
    import onnxruntime as ort

    with torch.no_grad():
        ref = net(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(net, x, check_trace=False)
        torch.testing.assert_close(traced(x), ref, atol=1e-5, rtol=1e-5)
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (x,), buf, dynamo=False, input_names=["x"], output_names=["y"])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # faster session start
    session = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-4, rtol=1e-4)


def _export_params() -> list:
    """Every model; in the default (fast) run only the smallest-named variant of each family module
    (e.g. deeplabv3plus_resnet18 for the four DeepLab depths), the others under ``-m slow``."""
    from medzoo.models.registry import _REGISTRY

    seen: set[str] = set()
    params = []
    for name in sorted(MODELS, key=lambda n: (len(n), n)):
        module = _REGISTRY[name].builder.__module__
        params.append(pytest.param(name, marks=[pytest.mark.slow] if module in seen else []))
        seen.add(module)
    return params


@pytest.mark.parametrize("name", _export_params())
def test_export_torchscript_and_onnx(name: str) -> None:
    card = get_card(name)
    if not card.exportable:
        pytest.skip(f"not exportable: {card.export_note}")
    dims = _primary(name)
    net = _build(name, dims, 2, 3).eval()
    _check_exports(net, torch.randn(1, 2, *_test_size(card, dims)))


def test_unet_deep_supervision_lists_in_train_tensor_in_eval() -> None:
    net = create_model("unet3d", in_channels=1, num_classes=2, features=(4, 8, 16), deep_supervision=True)
    outs = net.train()(torch.randn(1, 1, 16, 8, 12))
    assert [tuple(o.shape[2:]) for o in outs] == [(16, 8, 12), (8, 4, 6)]
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 1, 16, 8, 12)).shape == (1, 2, 16, 8, 12)


def test_parameter_counts_match_reference_implementations() -> None:
    from monai.networks.nets import SegResNet as MonaiSegResNet

    from medzoo.models.encoders.resnet import ResNetEncoder

    with torch.device("meta"):  # counts only: no memory, no initialisation cost
        ours = create_model("segresnet", in_channels=4, num_classes=3, init_filters=16)
        ref = MonaiSegResNet(spatial_dims=3, init_filters=16, in_channels=4, out_channels=3)
        assert count_parameters(ours) == count_parameters(ref)
        # torchvision ResNet-18 / -50 without fc (11,689,512 - 513,000 and 25,557,032 - 2,049,000).
        assert count_parameters(ResNetEncoder(2, 3, 18)) == 11_176_512
        assert count_parameters(ResNetEncoder(2, 3, 50)) == 23_508_032


def test_models_table_lists_every_model() -> None:
    from medzoo.models.table import models_table

    table = models_table("unet*")
    assert "unet3d" in table and "multiple of 8" in table and "deeplab" not in table


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_training_on_phantom_reduces_loss(name: str) -> None:
    from medzoo.data.phantom import make_phantom_case

    card = get_card(name)
    dims = _primary(name)
    image, label = make_phantom_case(0, shape=(40, 44, 36))
    img = torch.from_numpy(np.asarray(image.array, dtype=np.float32))
    lab = torch.from_numpy(np.asarray(label.array, dtype=np.int64))[0]
    img = (img - img.mean()) / (img.std() + 1e-6)
    size = _test_size(card, 3)
    if dims == 2:
        size = tuple(card.valid_size(max(s, 32)) for s in size[:2])
    # An axis larger than the 40x44x36 phantom: the largest size the card's rule takes that fits.
    d = max(card.size_divisor, 1)
    size = tuple(s if s <= n else card.valid_size(max(card.min_size, n // d * d)) for s, n in zip(size, lab.shape))
    if dims == 2:
        x = img[:, : size[0], : size[1], img.shape[-1] // 2][None]
        y = lab[: size[0], : size[1], lab.shape[-1] // 2][None]
    else:
        x = img[:, : size[0], : size[1], : size[2]][None]
        y = lab[: size[0], : size[1], : size[2]][None]
    assert tuple(x.shape[2:]) == size, f"{name}: no valid size fits the phantom"
    num_classes = int(lab.max()) + 1
    torch.manual_seed(0)
    net = create_model(name, in_channels=x.shape[1], num_classes=num_classes, spatial_dims=dims,
                       **card.tiny_kwargs).train()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        out = net(x)
        if card.task == "classification":
            target = (y > 0).flatten(1).float().mean(1).mul(num_classes - 1).round().long()
            loss = torch.nn.functional.cross_entropy(out, target)
        else:
            loss = torch.nn.functional.cross_entropy(out, y)
        aux = net.auxiliary_loss() if hasattr(net, "auxiliary_loss") else None
        if aux is not None:
            loss = loss + aux
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), f"{name}: losses {losses[:3]} ... {losses[-3:]}"
