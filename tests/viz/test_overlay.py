"""Overlay pictures: RGB panels for TensorBoard and PNG files through the label's centre of mass."""

from __future__ import annotations

import numpy as np
import pytest

from medzoo.viz.overlay import PALETTE, overlay_slices, save_comparison_png, save_overlay_png, slice_planes


def _case(shape=(20, 16, 12)):
    rng = np.random.default_rng(0)
    image = rng.random(shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[12:16, 4:8, 6:9] = 1
    label[13:15, 5:7, 7:8] = 2
    return image, label


def test_overlay_slices_shape_colours_and_centre():
    image, label = _case()
    rgb = overlay_slices(image, label, gap=2)
    # panels: k-plane (J rows=16, I cols=20), j-plane (K rows=12, I cols=20), i-plane (K rows=12, J cols=16)
    assert rgb.dtype == np.uint8 and rgb.shape == (16, 20 + 2 + 20 + 2 + 16, 3)
    # the label is visible in every panel: red-dominant pixels of label 1's colour blend
    first = rgb[:, :20].astype(int)
    reddish = (first[..., 0] - first[..., 1] > 60) & (first[..., 0] - first[..., 2] > 30)
    assert reddish.sum() >= 4 * 4 - 2 * 2  # label-1 ring in the k-plane through the centre of mass
    # empty label -> pure grey (R == G == B)
    grey = overlay_slices(image, np.zeros_like(label))
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])
    assert PALETTE.shape[1] == 3


def test_overlay_2d_and_errors():
    image, label = _case()
    rgb = overlay_slices(image[:, :, 7], label[:, :, 7])
    assert rgb.shape == (16, 20, 3)
    with pytest.raises(ValueError, match="differs"):
        overlay_slices(image, label[:-1])


def test_slice_planes_aspect_from_spacing():
    _, label = _case()
    planes = slice_planes(label, (13, 5, 7), spacing=(0.5, 1.0, 3.0))
    assert [p.shape for p, _ in planes] == [(16, 20), (12, 20), (12, 16)]
    assert [a for _, a in planes] == pytest.approx([2.0, 6.0, 3.0])


def test_save_overlay_png_and_comparison(tmp_path):
    import matplotlib.image as mpimg

    image, label = _case()
    out = save_overlay_png(image[None], label[None], tmp_path / "sub" / "ov.png", spacing=(0.5, 1.0, 3.0),
                           title="case 1")
    assert out.exists() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(out)
    assert img.shape[1] > img.shape[0]  # three panels side by side
    assert not list((tmp_path / "sub").glob(".*"))  # no temp files left behind
    pred = np.roll(label, 2, axis=0)
    cmp = save_comparison_png(None, label, pred, tmp_path / "cmp.png", spacing=(0.5, 1.0, 3.0), title="x")
    assert mpimg.imread(cmp).shape[0] > img.shape[0]  # two rows
