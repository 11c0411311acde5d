"""Post-processing of label maps: largest component, hole filling, small-component removal."""

from __future__ import annotations

import numpy as np

from medzoo.inference.postprocess import (
    ChosenPostprocessing,
    PostProcess,
    determine_postprocessing,
    fill_holes,
    keep_largest_component,
    keep_largest_foreground,
    remove_small_components,
)


def _scene() -> np.ndarray:
    lab = np.zeros((20, 16, 12), np.uint8)
    lab[2:10, 2:10, 2:10] = 1  # big class-1 cube with a hole
    lab[5:7, 5:7, 5:7] = 0
    lab[14:16, 12:14, 1:3] = 1  # small class-1 blob (8 voxels)
    lab[12:18, 2:6, 2:8] = 2  # class 2, one component
    lab[0, 15, 11] = 2  # single stray class-2 voxel
    return lab


def test_keep_largest_component_per_class():
    lab = _scene()
    out = keep_largest_component(lab)
    assert out.dtype == lab.dtype and out.shape == lab.shape
    assert out[14:16, 12:14, 1:3].max() == 0 and out[0, 15, 11] == 0
    assert (out == 1).sum() == 8**3 - 8 and (out == 2).sum() == 6 * 4 * 6
    only_2 = keep_largest_component(lab, classes=[2])
    assert only_2[14, 12, 1] == 1 and only_2[0, 15, 11] == 0


def test_remove_small_components():
    lab = _scene()
    out = remove_small_components(lab, min_size=9)
    assert out[14:16, 12:14, 1:3].max() == 0 and out[0, 15, 11] == 0
    assert (out == 1).sum() == 8**3 - 8
    np.testing.assert_array_equal(remove_small_components(lab, min_size=1), lab)


def test_fill_holes_fills_only_background_cavities():
    lab = _scene()
    lab[3, 3, 3] = 2  # a class-2 voxel inside class 1 must stay
    out = fill_holes(lab)
    assert (out[5:7, 5:7, 5:7] == 1).all()
    assert out[3, 3, 3] == 2
    assert out[0, 0, 0] == 0


def test_postprocess_chain():
    lab = _scene()
    chain = PostProcess(keep_largest=True, fill_holes=True)
    assert chain.active and not PostProcess().active
    out = chain(lab)
    assert (out == 1).sum() == 8**3 and (out == 2).sum() == 6 * 4 * 6
    np.testing.assert_array_equal(lab, _scene())  # input untouched


# ------------------------------------------------------------------------------ chosen from cross-validation


def _cv_cases(n=3):
    """References with one blob per class; predictions with a stray class-1 blob (removing it helps) and a
    class-2 structure that really is two components (keeping only the largest hurts)."""
    refs, preds = [], []
    for i in range(n):
        ref = np.zeros((24, 20, 16), np.uint8)
        ref[2:10, 2:10, 2:10] = 1
        ref[12:20, 2:8, 2:8] = 2
        ref[12:20, 12:18, 10:14] = 2  # a second class-2 component in the reference itself
        pred = ref.copy()
        pred[2:10, 2:9, 2:10] = 1 if i % 2 else pred[2:10, 2:9, 2:10]
        pred[20:23, 14:18, 1:4] = 1  # a false-positive class-1 blob
        refs.append(ref)
        preds.append(pred)
    return preds, refs


def test_determine_postprocessing_keeps_what_raises_dice(tmp_path):
    preds, refs = _cv_cases()
    chosen = determine_postprocessing(preds, refs, 3)
    # all-foreground would drop a real class-2 component, so it is refused; class 1 alone is accepted
    assert chosen.foreground is False and chosen.classes == (1,)
    assert chosen.dice_after[1] > chosen.dice_before[1] and chosen.dice_after[2] == chosen.dice_before[2]
    out = chosen(preds[0])
    assert out[20:23, 14:18, 1:4].max() == 0 and np.array_equal(out == 2, refs[0] == 2)
    chosen.save(tmp_path / "postprocessing.json")
    assert ChosenPostprocessing.load(tmp_path / "postprocessing.json") == chosen


def test_determine_postprocessing_foreground_and_nothing():
    preds, refs = _cv_cases()
    refs = [np.where(r == 2, 0, r) for r in refs]  # class 2 gone from the references...
    preds = [np.where(p == 2, 0, p) for p in preds]
    preds[0][0:2, 18:20, 14:16] = 2  # ...except a stray class-2 false positive
    chosen = determine_postprocessing(preds, refs, 3)
    assert chosen.foreground is True and chosen.active
    assert not determine_postprocessing(refs, refs, 3).active  # perfect predictions: nothing to gain


def test_keep_largest_foreground_treats_classes_as_one_object():
    lab = _scene()
    out = keep_largest_foreground(lab)
    # the class-1 cube and the class-2 slab do not touch: only the larger, the cube, stays
    assert out[2:10, 2:10, 2:10].max() == 1 and out[12:18, 2:6, 2:8].max() == 0 and out[0, 15, 11] == 0
