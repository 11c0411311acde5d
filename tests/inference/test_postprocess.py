"""Post-processing of label maps: largest component, hole filling, small-component removal."""

from __future__ import annotations

import numpy as np

from medzoo.inference.postprocess import (
    PostProcess,
    fill_holes,
    keep_largest_component,
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
