"""Analyze 7.5 (.hdr/.img, e.g. iSeg): read, write, and a clear error for affines it cannot store."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medzoo.errors import VolumeError
from medzoo.io.readers import read_volume, write_volume
from medzoo.io.volume import Volume, make_affine

# Analyze's axes: i points left (x decreasing), j anterior, k superior; origin on a whole voxel.
LAS = make_affine((0.8, 1.1, 2.5), (2.4, -4.4, -5.0), np.diag([-1.0, 1.0, 1.0]))


@pytest.mark.parametrize("dtype", ["uint8", "int16", "float32"])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("given", [".hdr", ".img"])
def test_analyze_roundtrip(tmp_path, dtype, channels, given):
    rng = np.random.default_rng(1)
    array = (rng.random((channels, 6, 7, 5)) * 200).astype(dtype)
    write_volume(Volume(array, LAS), tmp_path / f"sub{given}")
    assert (tmp_path / "sub.hdr").is_file() and (tmp_path / "sub.img").is_file()
    for name in ("sub.hdr", "sub.img"):
        back = read_volume(tmp_path / name)
        assert back.array.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(back.array, array)
        np.testing.assert_allclose(back.affine, LAS, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub.hdr", "sub.img"]


def test_reads_plain_analyze_written_by_nibabel(tmp_path):
    data = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    img = nib.AnalyzeImage(data, np.diag([-1.0, 1.0, 1.5, 1.0]))
    nib.save(img, str(tmp_path / "plain.hdr"))
    back = read_volume(tmp_path / "plain.img")
    np.testing.assert_array_equal(back.array[0], data)
    np.testing.assert_allclose(back.spacing, (1.0, 1.0, 1.5), atol=1e-6)


@pytest.mark.parametrize(
    "affine",
    [
        make_affine((0.8, 1.1, 2.5), (0.0, 0.0, 0.0), np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])),
        make_affine((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)),  # RAS: i flipped relative to Analyze
        make_affine((0.8, 1.1, 2.5), (1.3, 0.0, 0.0), np.diag([-1.0, 1.0, 1.0])),  # origin off-voxel
    ],
)
def test_analyze_refuses_affine_it_cannot_store(tmp_path, affine):
    array = np.zeros((1, 4, 5, 6), np.int16)
    with pytest.raises(VolumeError, match=r"Analyze .*cannot store this affine.*NIfTI"):
        write_volume(Volume(array, affine), tmp_path / "bad.hdr")
    assert list(tmp_path.iterdir()) == []


def test_analyze_refuses_unsupported_dtype(tmp_path):
    with pytest.raises(VolumeError, match="uint16"):
        write_volume(Volume(np.zeros((1, 4, 5, 6), np.uint16), LAS), tmp_path / "u16.img")
    assert list(tmp_path.iterdir()) == []


def test_centred_analyze_writes_back(tmp_path):
    """Plain Analyze (origin field zero) is centred, often on a half voxel; it must still write back."""
    data = np.arange(4 * 6 * 8, dtype=np.uint8).reshape(4, 6, 8)
    hdr = nib.AnalyzeHeader()
    hdr.set_data_shape(data.shape)
    hdr.set_data_dtype(np.uint8)
    hdr.set_zooms((1.0, 1.0, 1.5))
    nib.save(nib.AnalyzeImage(data, None, hdr), str(tmp_path / "iseg_like.hdr"))
    volume = read_volume(tmp_path / "iseg_like.hdr")
    assert not np.allclose(volume.origin, np.round(volume.origin))  # a half-voxel origin
    back = read_volume(write_volume(volume, tmp_path / "again.img"))
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-6)
