"""Preprocessor: crop, normalise, resample, and the exact way back (restore)."""

from __future__ import annotations

import numpy as np
import pytest

from medzoo.io.volume import Volume
from medzoo.planning.plan import Plan
from medzoo.transforms.intensity import normalize
from medzoo.transforms.preprocess import Preprocessor

SHAPE = (22, 19, 9)


def oblique_affine(spacing=(0.7, 0.9, 3.0)) -> np.ndarray:
    a, b = np.deg2rad(25), np.deg2rad(-10)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ rx @ np.diag(spacing)
    aff[:3, 3] = (-30.0, 12.0, 4.0)
    return aff


def make_case(seed=0):
    rng = np.random.default_rng(seed)
    lab = np.zeros(SHAPE, np.uint8)
    lab[6:14, 5:12, 2:6] = 1
    lab[9:12, 7:10, 3:5] = 2
    img = np.zeros((2, *SHAPE), np.float32)
    img[:, 3:19, 2:17, 1:8] = rng.uniform(50, 150, (2, 16, 15, 7))
    img[0][lab > 0] += 100
    return Volume(img, oblique_affine()), Volume(lab[None], oblique_affine())


def plan(**kw) -> Plan:
    return Plan(model="unet3d", in_channels=2, num_classes=3, **kw)


def test_crop_and_restore_label_exact():
    image, label = make_case()
    pre = Preprocessor(plan(crop_to_nonzero=True, normalization=["zscore_nonzero", "zscore"]))
    out = pre.apply(image, label)
    assert out.image.shape == (2, 16, 15, 7) and out.label.shape == (16, 15, 7)
    assert out.meta["crop_box"] == [[3, 19], [2, 17], [1, 8]]
    restored = pre.restore(out.label, out.meta, is_label=True)
    np.testing.assert_array_equal(restored, label.array[0])
    # the cropped grid's affine places voxel 0 where the original voxel (3, 2, 1) is
    np.testing.assert_allclose(np.asarray(out.meta["affine"]) @ [0, 0, 0, 1], image.affine @ [3, 2, 1, 1])
    probs = np.stack([out.label == k for k in range(3)]).astype(np.float32)
    back = pre.restore(probs, out.meta, is_label=False)
    assert back.shape == (3, *SHAPE)
    np.testing.assert_array_equal(back.argmax(0), label.array[0])
    assert back[0, 0, 0, 0] == 1.0  # background outside the crop


@pytest.mark.parametrize("target", [(0.7, 0.9, 3.0), (1.0, 1.0, 1.5), (0.5, 0.6, 3.0)])
def test_resample_restore_geometry(target):
    image, label = make_case(1)
    pre = Preprocessor(plan(crop_to_nonzero=True, target_spacing=target))
    out = pre.apply(image, label)
    spacing = np.asarray(out.meta["spacing"])
    np.testing.assert_allclose(spacing, target, rtol=0.12)
    restored = pre.restore(out.label, out.meta)
    assert restored.shape == SHAPE and restored.dtype == np.uint8
    agreement = (restored == label.array[0]).mean()
    if target == (0.7, 0.9, 3.0):
        np.testing.assert_array_equal(restored, label.array[0])  # identity resampling: exact
    else:
        assert agreement > 0.97
    # the resampled grid covers the same physical extent: centre of the volume maps to the same point
    s_in = np.asarray(out.meta["cropped_shape"], float)
    s_out = np.asarray(out.meta["shape"], float)
    crop0 = np.asarray([a for a, _ in out.meta["crop_box"]], float)
    c_orig = image.affine @ np.r_[crop0 + (s_in - 1) / 2, 1]
    c_new = np.asarray(out.meta["affine"]) @ np.r_[(s_out - 1) / 2, 1]
    np.testing.assert_allclose(c_new, c_orig, atol=1e-6)


def test_anisotropic_axis_resampled_separately():
    image, label = make_case(2)  # spacing ratio 3.0/0.7 > 3
    pre = Preprocessor(plan(target_spacing=(0.7, 0.9, 1.5)))
    out = pre.apply(image, label)
    assert out.meta["separate_axis"] == 2
    assert out.image.shape[1:] == (22, 19, 18)
    # nearest along the low-res axis: each original slice appears twice
    np.testing.assert_allclose(out.image[:, :, :, 4], out.image[:, :, :, 5], atol=1e-5)


@pytest.mark.parametrize("scheme", ["zscore", "zscore_nonzero", "ct", "max_min", "full_volume_mean", "brats",
                                    "max", "mean", "none"])
def test_normalisation_schemes(scheme):
    x = np.zeros((10, 10, 4), np.float32)
    x[2:8, 2:8] = np.linspace(10, 200, 36 * 4).reshape(6, 6, 4)
    stats = {"mean": 100.0, "std": 50.0, "percentile_00_5": 20.0, "percentile_99_5": 180.0}
    y = normalize(x, scheme, stats)
    nz = x != 0
    if scheme in ("zscore", "full_volume_mean"):
        assert abs(y.mean()) < 1e-4 and abs(y.std() - 1) < 1e-3
    elif scheme == "zscore_nonzero":
        assert abs(y[nz].mean()) < 1e-4 and (y[~nz] == 0).all()
    elif scheme == "mean":
        assert abs(y[nz].mean()) < 1e-4 and (y[~nz] < 0).all()
    elif scheme == "ct":
        assert y.max() == pytest.approx((180 - 100) / 50) and y.min() == pytest.approx((20 - 100) / 50)
    elif scheme in ("max_min", "max"):
        assert y.min() == 0 and y.max() == pytest.approx(1)
    elif scheme == "brats":
        assert (y[~nz] == 0).all() and y[nz].min() == pytest.approx(10) and y[nz].max() == pytest.approx(110)
    else:
        np.testing.assert_array_equal(y, x)
