"""Losses against hand-computed values, shape handling (2D/3D, regions) and gradient sanity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medzoo.errors import ConfigError
from medzoo.losses import (
    DeepSupervisionLoss,
    create_loss,
    deep_supervision_weights,
    labels_to_regions,
    list_losses,
    one_hot,
)

# One sample, two classes, 2x2 image. Class-1 probabilities p1 (class 0 gets 1 - p1), labels g.
P1 = np.array([[0.9, 0.2], [0.6, 0.1]])
G = np.array([[1, 0], [1, 0]])


def _logits_from_probs(p1: np.ndarray) -> torch.Tensor:
    """Logits whose softmax over 2 classes is exactly (1 - p1, p1): shape (1, 2, *S)."""
    probs = np.stack([1 - p1, p1])[None]
    return torch.tensor(np.log(probs), dtype=torch.float32)


def _target(g: np.ndarray) -> torch.Tensor:
    return torch.tensor(g, dtype=torch.int64)[None]


def test_soft_dice_hand_values_with_and_without_background():
    logits, target = _logits_from_probs(P1), _target(G)
    # class 1: TP = 0.9 + 0.6 = 1.5, sum p = 1.8, sum g = 2  -> dice = 3.0 / 3.8
    # class 0: TP = 0.8 + 0.9 = 1.7, sum p = 2.2, sum g = 2  -> dice = 3.4 / 4.2
    fg = create_loss("dice", include_background=False, smooth=0.0)(logits, target)
    both = create_loss("dice", include_background=True, smooth=0.0)(logits, target)
    assert fg.item() == pytest.approx(1 - 3.0 / 3.8, abs=1e-6)
    assert both.item() == pytest.approx(1 - (3.0 / 3.8 + 3.4 / 4.2) / 2, abs=1e-6)


def test_dice_smooth_makes_empty_class_score_one():
    # Class 2 absent from target and (almost) from prediction: with smooth it should not produce NaN.
    logits = torch.tensor([[[[10.0, 10.0]], [[-10.0, -10.0]], [[-30.0, -30.0]]]])  # (1, 3, 1, 2)
    target = torch.zeros((1, 1, 2), dtype=torch.int64)
    loss = create_loss("dice", include_background=True, smooth=1.0)(logits, target)
    assert torch.isfinite(loss)
    assert loss.item() < 0.01


def test_batch_dice_pools_over_batch_and_per_sample_averages():
    p_a, p_b = P1, np.array([[0.3, 0.7], [0.5, 0.5]])
    g_a, g_b = G, np.array([[0, 1], [1, 1]])
    logits = torch.cat([_logits_from_probs(p_a), _logits_from_probs(p_b)])
    target = torch.cat([_target(g_a), _target(g_b)])

    def dice(p, g):
        return 2 * (p * g).sum() / (p.sum() + g.sum())

    per_sample = 1 - (dice(p_a, g_a) + dice(p_b, g_b)) / 2
    pooled = 1 - dice(np.concatenate([p_a, p_b]), np.concatenate([g_a, g_b]))
    assert create_loss("dice", smooth=0.0)(logits, target).item() == pytest.approx(per_sample, abs=1e-6)
    assert create_loss("dice", smooth=0.0, batch_dice=True)(logits, target).item() == pytest.approx(pooled, abs=1e-6)
    assert per_sample != pytest.approx(pooled, abs=1e-3)  # the two modes really differ on this input


def test_cross_entropy_and_class_weights_hand_values():
    logits, target = _logits_from_probs(P1), _target(G)
    p_true = np.array([0.9, 0.8, 0.6, 0.9])  # prob. of the true class at each pixel (row-major)
    expected = float(np.mean(-np.log(p_true)))
    assert create_loss("ce")(logits, target).item() == pytest.approx(expected, abs=1e-6)
    # weights (w0, w1) = (1, 3): weighted mean sum(w_t * nll) / sum(w_t); true classes are 1, 0, 1, 0
    w_t = np.array([3.0, 1.0, 3.0, 1.0])
    weighted = float((w_t * -np.log(p_true)).sum() / w_t.sum())
    assert create_loss("ce", weight=[1.0, 3.0])(logits, target).item() == pytest.approx(weighted, abs=1e-6)


def test_dice_ce_is_sum_of_parts_and_default():
    logits, target = _logits_from_probs(P1), _target(G)
    p_true = np.array([0.9, 0.8, 0.6, 0.9])
    expected = (1 - 3.0 / 3.8) + float(np.mean(-np.log(p_true)))
    assert create_loss()(logits, target).item() == pytest.approx(expected, abs=1e-4)  # smooth=1e-5 default
    mixed = create_loss("dice_ce", weight_dice=0.5, weight_ce=2.0, smooth=0.0)(logits, target).item()
    assert mixed == pytest.approx(0.5 * (1 - 3.0 / 3.8) + 2.0 * float(np.mean(-np.log(p_true))), abs=1e-6)


def test_tversky_hand_value_and_reduces_to_dice():
    logits, target = _logits_from_probs(P1), _target(G)
    # class 1: TP = 1.5, FP = 0.3, FN = 0.5 -> TI = 1.5 / (1.5 + 0.3*0.3 + 0.7*0.5)
    tv = create_loss("tversky", alpha=0.3, beta=0.7, smooth=0.0)(logits, target)
    assert tv.item() == pytest.approx(1 - 1.5 / (1.5 + 0.09 + 0.35), abs=1e-6)
    half = create_loss("tversky", alpha=0.5, beta=0.5, smooth=0.0)(logits, target)
    assert half.item() == pytest.approx(1 - 3.0 / 3.8, abs=1e-6)


def test_focal_hand_value_and_gamma_zero_is_ce():
    logits, target = _logits_from_probs(P1), _target(G)
    pt = np.array([0.9, 0.8, 0.6, 0.9])
    expected = float(np.mean(-((1 - pt) ** 2) * np.log(pt)))
    assert create_loss("focal", gamma=2.0)(logits, target).item() == pytest.approx(expected, abs=1e-6)
    assert create_loss("focal", gamma=0.0)(logits, target).item() == pytest.approx(
        create_loss("ce")(logits, target).item(), abs=1e-6
    )
    # alpha: per-class weights of the true class (1, 0, 1, 0) -> (0.75, 0.25, 0.75, 0.25)
    a_t = np.array([0.75, 0.25, 0.75, 0.25])
    alpha_val = float(np.mean(-a_t * (1 - pt) ** 2 * np.log(pt)))
    assert create_loss("focal", alpha=[0.25, 0.75])(logits, target).item() == pytest.approx(alpha_val, abs=1e-6)


def test_generalized_dice_hand_value():
    logits, target = _logits_from_probs(P1), _target(G)
    # both classes have 2 voxels -> w = 1/4 each; numer = 2 * (1.7 + 1.5) / 4, denom = (4.2 + 3.8) / 4
    loss = create_loss("generalized_dice", include_background=True, smooth=0.0)(logits, target)
    assert loss.item() == pytest.approx(1 - 1.6 / 2.0, abs=1e-6)
    # unequal class sizes: class-1 voxels 1, class-0 voxels 3 -> w1 = 1, w0 = 1/9
    g2 = np.array([[1, 0], [0, 0]])
    p0, p1 = 1 - P1, P1
    w0, w1 = 1 / 9, 1.0
    tp0, tp1 = (p0 * (1 - g2)).sum(), (p1 * g2).sum()
    num = 2 * (w0 * tp0 + w1 * tp1)
    den = w0 * (p0.sum() + 3) + w1 * (p1.sum() + 1)
    loss2 = create_loss("generalized_dice", include_background=True, smooth=0.0)(logits, _target(g2))
    assert loss2.item() == pytest.approx(1 - num / den, abs=1e-6)


def test_bce_and_bce_dice_on_region_targets():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 5, 4, 3, generator=gen)
    labels = torch.randint(0, 4, (2, 5, 4, 3), generator=gen)
    regions = labels_to_regions(labels, [(1, 2, 3), (2, 3), (3,)])  # BraTS WT, TC, ET
    assert regions.shape == (2, 3, 5, 4, 3)
    assert torch.equal(regions[:, 0].bool(), labels > 0) and torch.equal(regions[:, 2].bool(), labels == 3)
    x, y = logits.double().numpy(), regions.double().numpy()
    s = 1 / (1 + np.exp(-x))
    bce_np = float(np.mean(-(y * np.log(s) + (1 - y) * np.log(1 - s))))
    assert create_loss("bce")(logits, regions).item() == pytest.approx(bce_np, abs=1e-5)
    tp = (s * y).sum(axis=(2, 3, 4))
    dice_np = 1 - float(np.mean(2 * tp / (s.sum(axis=(2, 3, 4)) + y.sum(axis=(2, 3, 4)))))
    both = create_loss("bce_dice", smooth=0.0)(logits, regions).item()
    assert both == pytest.approx(bce_np + dice_np, abs=1e-5)


def test_binary_single_channel_with_integer_target():
    logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]])  # (1, 1, 2, 2)
    target = torch.tensor([[[1, 0], [0, 0]]])
    x, y = logits.double().numpy().ravel(), np.array([1.0, 0, 0, 0])
    s = 1 / (1 + np.exp(-x))
    expected = float(np.mean(-(y * np.log(s) + (1 - y) * np.log(1 - s))))
    assert create_loss("bce")(logits, target).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("name", ["dice", "generalized_dice", "tversky", "focal", "ce", "dice_ce", "dice_focal"])
@pytest.mark.parametrize("shape", [(6, 7), (5, 6, 4)])
def test_multiclass_losses_2d_3d_grad_and_descent(name, shape):
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 3, (2, *shape), generator=gen)
    logits = torch.randn(2, 3, *shape, generator=gen, requires_grad=True)
    loss_fn = create_loss(name)
    loss = loss_fn(logits, target)
    assert loss.ndim == 0
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # a few plain gradient steps must lower the loss
    with torch.no_grad():
        x = logits.detach().clone()
    x.requires_grad_(True)
    opt = torch.optim.SGD([x], lr=5.0)
    start = loss_fn(x, target).item()
    for _ in range(5):
        opt.zero_grad()
        loss_fn(x, target).backward()
        opt.step()
    assert loss_fn(x, target).item() < start
    # a (B, 1, *S) target gives the same value as (B, *S)
    assert loss_fn(logits, target[:, None]).item() == pytest.approx(loss.item(), abs=1e-6)


def test_perfect_prediction_gives_near_zero_dice():
    target = torch.randint(0, 3, (2, 6, 6, 6), generator=torch.Generator().manual_seed(1))
    logits = one_hot(target, 3) * 40.0
    assert create_loss("dice", include_background=True)(logits, target).item() < 1e-5
    assert create_loss("dice_ce")(logits, target).item() < 1e-5


def test_one_hot_and_float_onehot_target_equivalent():
    gen = torch.Generator().manual_seed(2)
    target = torch.randint(0, 4, (2, 5, 6), generator=gen)
    oh = one_hot(target, 4)
    assert oh.shape == (2, 4, 5, 6) and torch.equal(oh.argmax(1), target) and torch.all(oh.sum(1) == 1)
    logits = torch.randn(2, 4, 5, 6, generator=gen)
    loss = create_loss("dice")
    assert loss(logits, oh).item() == pytest.approx(loss(logits, target).item(), abs=1e-7)


@pytest.mark.parametrize("name", ["dice", "generalized_dice", "tversky"])
@pytest.mark.parametrize("batch_dice", [False, True])
@pytest.mark.parametrize("include_background", [False, True])
def test_label_map_fast_path_equals_one_hot_path(name, batch_dice, include_background):
    # integer targets use gather/scatter_add statistics; float one-hot targets the dense product: same values
    gen = torch.Generator().manual_seed(4)
    target = torch.randint(0, 3, (2, 5, 4, 6), generator=gen)
    target[1][target[1] == 2] = 0  # a class absent from one sample
    logits = torch.randn(2, 3, 5, 4, 6, generator=gen, requires_grad=True)
    loss = create_loss(name, batch_dice=batch_dice, include_background=include_background)
    fast = loss(logits, target)
    (g_fast,) = torch.autograd.grad(fast, logits)
    dense = loss(logits, one_hot(target, 3))
    (g_dense,) = torch.autograd.grad(dense, logits)
    assert fast.item() == pytest.approx(dense.item(), abs=1e-6)
    assert torch.allclose(g_fast, g_dense, atol=1e-6)


def test_deep_supervision_weights_and_downsampling():
    assert deep_supervision_weights(3) == pytest.approx([4 / 7, 2 / 7, 1 / 7])
    assert deep_supervision_weights(3, drop_lowest=True) == pytest.approx([2 / 3, 1 / 3, 0.0])
    gen = torch.Generator().manual_seed(0)
    # target made of 2x2x2 blocks so nearest downsampling by 2 is exact and checkable by hand
    coarse = torch.randint(0, 3, (2, 4, 4, 4), generator=gen)
    target = coarse.repeat_interleave(2, 1).repeat_interleave(2, 2).repeat_interleave(2, 3)  # (2, 8, 8, 8)
    outs = [torch.randn(2, 3, 8, 8, 8, generator=gen), torch.randn(2, 3, 4, 4, 4, generator=gen)]
    base = create_loss("dice_ce")
    ds = DeepSupervisionLoss(base)
    expected = 2 / 3 * base(outs[0], target) + 1 / 3 * base(outs[1], coarse)
    assert ds(outs, target).item() == pytest.approx(expected.item(), abs=1e-6)
    # explicit weights, per-level targets, and a plain tensor pass through
    ds2 = create_loss("dice_ce", deep_supervision=True, ds_weights=[1.0, 0.0])
    assert ds2(outs, [target, coarse]).item() == pytest.approx(base(outs[0], target).item(), abs=1e-6)
    assert ds(outs[0], target).item() == pytest.approx(base(outs[0], target).item(), abs=1e-6)


def test_deep_supervision_with_region_targets():
    gen = torch.Generator().manual_seed(5)
    coarse = (torch.rand(1, 3, 3, 3, generator=gen) > 0.5).float()
    target = coarse.repeat_interleave(2, 2).repeat_interleave(2, 3)  # (1, 3, 6, 6)
    outs = [torch.randn(1, 3, 6, 6, generator=gen), torch.randn(1, 3, 3, 3, generator=gen)]
    base = create_loss("bce_dice")
    got = DeepSupervisionLoss(base)(outs, target).item()
    assert got == pytest.approx((2 / 3 * base(outs[0], target) + 1 / 3 * base(outs[1], coarse)).item(), abs=1e-6)


def test_registry_errors_and_listing():
    assert {"dice", "dice_ce", "generalized_dice", "tversky", "focal", "ce", "bce", "bce_dice"} <= set(
        list_losses()
    )
    with pytest.raises(ConfigError, match="unknown loss"):
        create_loss("nope")
    with pytest.raises(ConfigError, match="bad arguments"):
        create_loss("dice", gamma=2)
    with pytest.raises(ValueError, match="does not match"):
        create_loss("dice")(torch.zeros(1, 2, 4, 4), torch.zeros(1, 5, 4, dtype=torch.int64))


def test_loss_is_finite_under_half_precision_logits():
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(1, 3, 4, 4, 4, generator=gen) * 30).to(torch.bfloat16)
    target = torch.randint(0, 3, (1, 4, 4, 4), generator=gen)
    val = create_loss("dice_ce")(logits, target)
    assert val.dtype == torch.float32 and math.isfinite(val.item())


# ----------------------------------------------------------------------------------------------- ignore label
IGNORE = 255
REGIONS = [[1, 2, 3], [2, 3], [3]]


def _sparse_batch(seed: int = 0):
    """Logits (2, 4, 6, 5, 4) and labels with about 60 % of the voxels set to the ignore value."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (2, 6, 5, 4), generator=g)
    ignored = torch.rand(labels.shape, generator=g) < 0.6
    return torch.randn(2, 4, 6, 5, 4, generator=g), labels.masked_fill(ignored, IGNORE), ignored


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("dice_ce", {}), ("dice_ce", {"weight": [0.5, 1.0, 2.0, 1.5]}), ("dice_ce", {"batch_dice": True}),
        ("dice", {}), ("ce", {}), ("bce_dice", {"regions": REGIONS}), ("bce", {"regions": REGIONS}),
        ("dice", {"activation": "sigmoid", "regions": REGIONS}),
    ],
)
def test_ignored_voxels_change_no_gradient(name, kwargs):
    logits, labels, ignored = _sparse_batch()
    n_out = 3 if "regions" in kwargs else 4
    logits = logits[:, :n_out].clone().requires_grad_(True)
    loss_fn = create_loss(name, ignore_index=IGNORE, **kwargs)
    loss = loss_fn(logits, labels)
    loss.backward()
    grad = logits.grad.permute(1, 0, 2, 3, 4)  # (K, B, *S)
    assert torch.isfinite(loss)
    assert (grad[:, ignored] == 0).all()  # exactly zero, not merely small
    assert (grad[:, ~ignored] != 0).any()
    # whatever the network says on ignored voxels, the loss is the same
    other = logits.detach().clone()
    other.permute(1, 0, 2, 3, 4)[:, ignored] = 100.0 * torch.randn(int(ignored.sum()), dtype=other.dtype)
    assert torch.allclose(loss_fn(other, labels), loss.detach(), rtol=1e-6, atol=1e-7)


def test_ignore_label_equals_loss_on_the_annotated_voxels_only():
    """CE over annotated voxels of a batch equals plain CE over those voxels; an all-ignored patch gives 0."""
    logits, labels, ignored = _sparse_batch(1)
    got = create_loss("ce", ignore_index=IGNORE)(logits, labels)
    flat_logits = logits.permute(0, 2, 3, 4, 1)[~ignored]
    want = torch.nn.functional.cross_entropy(flat_logits, labels[~ignored])
    assert torch.allclose(got, want)
    all_ignored = torch.full_like(labels, IGNORE)
    assert create_loss("dice_ce", ignore_index=IGNORE)(logits, all_ignored).item() == pytest.approx(0.0, abs=1e-6)


def test_region_loss_from_integer_labels_matches_given_region_targets():
    logits, labels, _ = _sparse_batch(2)
    labels = labels.clamp_max(3)  # no ignore
    from_labels = create_loss("bce_dice", regions=REGIONS)(logits[:, :3], labels)
    from_regions = create_loss("bce_dice")(logits[:, :3], labels_to_regions(labels, REGIONS))
    assert torch.allclose(from_labels, from_regions)
    ds = create_loss("bce_dice", regions=REGIONS, ignore_index=IGNORE, deep_supervision=True)
    outs = [logits[:, :3].requires_grad_(True), torch.randn(2, 3, 3, 3, 2, requires_grad=True)]
    ds(outs, labels).backward()
    assert all(o.grad is not None and torch.isfinite(o.grad).all() for o in outs)
