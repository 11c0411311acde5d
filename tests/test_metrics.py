"""Metrics: agreement with MONAI on random and edge-case masks (anisotropic spacing), the empty-mask rule,
and the fast bincount Dice."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import ndimage

from medzoo.metrics import ALL_METRICS, compute_case_metrics, dice_per_class, surface_distances

SPACING_3D = (0.7, 1.3, 2.5)
SPACING_2D = (0.6, 1.7)


def _blobs(shape, seed, n_labels=2, sigma=1.5):
    """Smooth random label map with labels 0..n_labels (blobs, not salt-and-pepper)."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((n_labels + 1, *shape)), sigma=(0, *([sigma] * len(shape))))
    field[0] += 0.15  # a bit more background
    return field.argmax(0).astype(np.uint8)


def _monai_metrics(pred, ref, label, spacing, tol):
    """MONAI's values for one class (binary masks as (1, 1, *S) tensors)."""
    import torch
    from monai.metrics import (
        compute_average_surface_distance,
        compute_confusion_matrix_metric,
        compute_dice,
        compute_hausdorff_distance,
        compute_iou,
        compute_surface_dice,
        get_confusion_matrix,
    )

    p = torch.as_tensor((pred == label)[None, None].astype(np.float32))
    r = torch.as_tensor((ref == label)[None, None].astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = get_confusion_matrix(p, r)
        out = {
            "dice": compute_dice(p, r, ignore_empty=False).item(),
            "iou": compute_iou(p, r, ignore_empty=False).item(),
            "precision": compute_confusion_matrix_metric("precision", cm).item(),
            "recall": compute_confusion_matrix_metric("recall", cm).item(),
            "hd95": compute_hausdorff_distance(p, r, percentile=95, spacing=list(spacing)).item(),
            "hd": compute_hausdorff_distance(p, r, spacing=list(spacing)).item(),
            "assd": compute_average_surface_distance(p, r, symmetric=True, spacing=list(spacing)).item(),
            "nsd": compute_surface_dice(p, r, [tol], spacing=list(spacing)).item(),
        }
    return out


METRICS = ("dice", "iou", "precision", "recall", "hd95", "hd", "assd", "nsd")


def _compare(pred, ref, labels, spacing, tol=1.5):
    ours = compute_case_metrics(pred, ref, labels, spacing, metrics=METRICS, tolerance_mm=tol)
    for lab in labels:
        theirs = _monai_metrics(pred, ref, lab, spacing, tol)
        for m in METRICS:
            atol = 1e-3 if m in ("hd95", "hd", "assd") else 1e-6
            assert ours[lab][m] == pytest.approx(theirs[m], abs=atol), (lab, m, ours[lab][m], theirs[m])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_3d_blobs_match_monai(seed):
    ref = _blobs((24, 28, 20), seed)
    pred = _blobs((24, 28, 20), seed + 100)
    # make pred a plausible prediction: mostly the reference, with perturbed regions
    pred = np.where(np.random.default_rng(seed).random(ref.shape) < 0.85, ref, pred)
    _compare(pred, ref, [1, 2], SPACING_3D)


def test_random_2d_blobs_match_monai():
    ref = _blobs((40, 33), 7, n_labels=3)
    pred = _blobs((40, 33), 8, n_labels=3)
    _compare(pred, ref, [1, 2, 3], SPACING_2D, tol=2.0)


def test_edge_cases_match_monai():
    shape = (12, 10, 9)
    # masks touching the array border, a single voxel, a thin plate, a shifted box
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    ref[0:5, 0:4, 0:9] = 1  # touches three faces
    pred[0:6, 1:4, 0:8] = 1
    ref[9, 8, 4] = 2  # single voxel
    pred[8:11, 7:10, 3:6] = 2  # cube around it
    ref[7, 0:6, 0:3] = 3  # one-voxel-thick plate
    pred[7:9, 0:6, 0:3] = 3
    _compare(pred, ref, [1, 2, 3], SPACING_3D, tol=1.0)


def test_far_apart_objects_and_identical_masks():
    shape = (30, 8, 8)
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    ref[2:5, 2:5, 2:5] = 1
    pred[25:28, 2:5, 2:5] = 1
    ref[10:14, 1:7, 1:7] = 2
    pred[10:14, 1:7, 1:7] = 2  # identical
    _compare(pred, ref, [1, 2], SPACING_3D)
    res = compute_case_metrics(pred, ref, [1, 2], SPACING_3D, metrics=METRICS)
    # class 1 (no overlap): the farthest pred border voxels (i = 27) are 23 voxels * 0.7 mm from ref's face i = 4
    assert res[1]["dice"] == 0.0 and res[1]["hd"] == pytest.approx(23 * 0.7)
    assert res[2] == {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0, "hd95": 0.0, "hd": 0.0,
                      "assd": 0.0, "nsd": 1.0}


def test_empty_rule():
    shape = (8, 9, 7)
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    ref[2:5, 2:5, 2:5] = 1  # class 1 only in ref
    pred[3:6, 3:6, 3:6] = 2  # class 2 only in pred; class 3 nowhere
    res = compute_case_metrics(pred, ref, [1, 2, 3], SPACING_3D, metrics=ALL_METRICS)
    for lab in (1, 2):
        assert res[lab]["dice"] == 0.0 and res[lab]["iou"] == 0.0 and res[lab]["nsd"] == 0.0
        assert res[lab]["precision"] == 0.0 and res[lab]["recall"] == 0.0
        assert math.isinf(res[lab]["hd95"]) and math.isinf(res[lab]["assd"]) and math.isinf(res[lab]["hd"])
    both_empty = res[3]
    assert both_empty["dice"] == 1.0 and both_empty["iou"] == 1.0 and both_empty["nsd"] == 1.0
    assert both_empty["hd95"] == 0.0 and both_empty["assd"] == 0.0
    assert both_empty["vol_pred"] == 0.0 and both_empty["vol_ref"] == 0.0
    assert res[1]["vol_ref"] == pytest.approx(27 * 0.7 * 1.3 * 2.5)
    # MONAI agrees on the one-empty case for Dice, HD (inf) and NSD; its HD95 is NaN (quantile of infs)
    theirs = _monai_metrics(pred, ref, 1, SPACING_3D, 1.0)
    assert theirs["dice"] == 0.0 and math.isinf(theirs["hd"]) and math.isinf(theirs["assd"])
    assert theirs["nsd"] == 0.0 and math.isnan(theirs["hd95"])
    # ... and returns NaN where both are empty, where medzoo's rule gives a perfect score
    theirs_empty = _monai_metrics(pred, ref, 3, SPACING_3D, 1.0)
    assert math.isnan(theirs_empty["hd95"]) and math.isnan(theirs_empty["nsd"])


def test_hand_computed_distances_2d():
    # ref: 3x3 square; pred: the same square shifted by one voxel along axis 0 (spacing 2 mm along it)
    ref = np.zeros((9, 9), np.uint8)
    pred = np.zeros((9, 9), np.uint8)
    ref[2:5, 2:5] = 1
    pred[3:6, 2:5] = 1
    d_pr, d_rp = surface_distances(pred == 1, ref == 1, (2.0, 1.0))
    # Borders are the 8 outer voxels of each square. pred border -> ref border: (3,2) (3,4) (4,2) (4,4) lie on
    # it (0); (3,3) is 1 mm from (3,2); row 5 is 2 mm from row 4 (3 voxels). Symmetric for ref -> pred.
    expected = [0, 0, 0, 0, 1, 2, 2, 2]
    assert sorted(d_pr.tolist()) == pytest.approx(expected)
    assert sorted(d_rp.tolist()) == pytest.approx(expected)
    res = compute_case_metrics(pred, ref, [1], (2.0, 1.0), metrics=("hd", "hd95", "assd", "nsd", "dice"),
                               tolerance_mm=1.0)
    assert res[1]["dice"] == pytest.approx(2 * 6 / 18)
    assert res[1]["hd"] == pytest.approx(2.0) and res[1]["hd95"] == pytest.approx(2.0)
    assert res[1]["assd"] == pytest.approx(14 / 16)
    assert res[1]["nsd"] == pytest.approx(10 / 16)


def test_channel_axis_and_errors():
    ref = _blobs((10, 11, 9), 3)
    a = compute_case_metrics(ref[None], ref[None], [1, 2], SPACING_3D)
    assert a[1]["dice"] == 1.0 and a[2]["hd95"] == 0.0
    with pytest.raises(ValueError, match="differs"):
        compute_case_metrics(ref, ref[:-1], [1], SPACING_3D)
    with pytest.raises(ValueError, match="unknown metric"):
        compute_case_metrics(ref, ref, [1], SPACING_3D, metrics=("dice", "bogus"))
    with pytest.raises(ValueError, match="spacing"):
        compute_case_metrics(ref, ref, [1], (1.0, 1.0))


def test_negative_or_signed_labels_still_scored():
    ref = np.zeros((6, 6, 6), np.int16)
    pred = np.zeros((6, 6, 6), np.int16)
    ref[1:3, 1:3, 1:3] = 1
    pred[1:3, 1:3, 1:4] = 1
    pred[0, 0, 0] = -1  # odd value: boxes are not used, result must not change
    res = compute_case_metrics(pred, ref, {1: "organ"}, SPACING_3D, metrics=("dice",))
    assert res[1]["dice"] == pytest.approx(2 * 8 / (8 + 12))


def test_dice_per_class_matches_definition_numpy_and_torch():
    import torch

    rng = np.random.default_rng(0)
    pred = rng.integers(0, 4, (2, 9, 8, 7))
    ref = rng.integers(0, 3, (2, 9, 8, 7))  # class 3 never in ref
    got = dice_per_class(pred, ref, 5)
    for k in range(4):
        p, r = pred == k, ref == k
        assert got[k] == pytest.approx(2 * (p & r).sum() / (p.sum() + r.sum()))
    assert got[3] == 0.0 and got[4] == 1.0  # pred-only class -> 0; absent everywhere -> 1 (rule)
    assert np.isnan(dice_per_class(pred, ref, 5, empty_value=np.nan)[4])
    got_t = dice_per_class(torch.as_tensor(pred), torch.as_tensor(ref), 5)
    np.testing.assert_allclose(got_t, got)
    # agrees with compute_case_metrics
    case = compute_case_metrics(pred[0], ref[0], [1, 2], SPACING_3D, metrics=("dice",))
    fast = dice_per_class(pred[0], ref[0], 4)
    assert fast[1] == pytest.approx(case[1]["dice"]) and fast[2] == pytest.approx(case[2]["dice"])


@pytest.mark.realdata
@pytest.mark.slow
def test_hippocampus_labels_match_monai():
    """Real label maps (Task04_Hippocampus, anisotropic file spacing) vs a shifted/eroded 'prediction'."""
    import os
    from pathlib import Path

    root = Path(os.environ.get("MEDZOO_HIPPOCAMPUS_DIR",
                               Path(__file__).resolve().parents[1] / "../shared/data/Task04_Hippocampus"))
    files = sorted((root / "labelsTr").glob("hippocampus_*.nii.gz"))[:3] if root.is_dir() else []
    if not files:
        pytest.skip(f"no Hippocampus labels under {root}")
    from medzoo.io.readers import read_volume

    for path in files:
        vol = read_volume(path)
        ref = np.asarray(vol.array[0]).astype(np.uint8)
        pred = np.roll(ref, 1, axis=0)
        pred[ndimage.binary_erosion(ref == 2)] = 1
        _compare(pred, ref, [1, 2], vol.spacing, tol=1.0)
