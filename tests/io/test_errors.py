"""Bad files give a one-line VolumeError naming the file and the problem; failed writes leave nothing."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from medzoo.errors import VolumeError
from medzoo.io.readers import read_volume, write_volume
from medzoo.io.volume import Volume, make_affine

AFFINE = make_affine((0.8, 1.1, 2.5), (-40.125, 25.5, 12.75), np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]]))


def expect_error(path, pattern, **kwargs):
    with pytest.raises(VolumeError, match=pattern) as info:
        read_volume(path, **kwargs)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message
    return message


@pytest.fixture
def good_gz(tmp_path):
    array = np.random.default_rng(0).normal(size=(1, 12, 10, 8)).astype(np.float32)
    return write_volume(Volume(array, AFFINE), tmp_path / "good.nii.gz")


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.nii.gz", "file not found")


def test_missing_itk_file(tmp_path):
    expect_error(tmp_path / "nope.mha", "file not found")


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "scan.png"
    path.write_bytes(b"\x89PNG")
    expect_error(path, "unsupported file type")


def test_truncated_gzip(tmp_path, good_gz):
    raw = good_gz.read_bytes()
    bad = tmp_path / "trunc.nii.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    expect_error(bad, "truncated")


def test_corrupt_gzip(tmp_path, good_gz):
    raw = bytearray(good_gz.read_bytes())
    for offset in range(len(raw) // 2, len(raw) // 2 + 8):
        raw[offset] ^= 0x5A
    bad = tmp_path / "corrupt.nii.gz"
    bad.write_bytes(bytes(raw))
    expect_error(bad, "corrupt")


def test_text_file_named_nii_gz(tmp_path):
    bad = tmp_path / "notes.nii.gz"
    bad.write_text("this is not an image\n")
    expect_error(bad, "not a gzip file")


def test_gzipped_text_named_nii_gz(tmp_path):
    bad = tmp_path / "notes2.nii.gz"
    bad.write_bytes(gzip.compress(b"this is not an image\n" * 40))
    expect_error(bad, "not a NIfTI file")


def test_text_file_named_nii(tmp_path):
    bad = tmp_path / "notes.nii"
    bad.write_text("this is not an image\n" * 40)
    expect_error(bad, "not a recognised image")


def test_truncated_uncompressed_nifti(tmp_path, good_gz):
    raw = gzip.decompress(good_gz.read_bytes())
    bad = tmp_path / "trunc.nii"
    bad.write_bytes(raw[:-200])
    expect_error(bad, "truncated")


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_text_file_named_itk(tmp_path, suffix):
    bad = tmp_path / f"notes{suffix}"
    bad.write_text("this is not an image\n")
    expect_error(bad, "cannot read image")


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_truncated_itk(tmp_path, suffix):
    array = np.arange(12 * 10 * 8, dtype=np.int16).reshape(1, 12, 10, 8)
    good = write_volume(Volume(array, AFFINE), tmp_path / f"good{suffix}")
    raw = good.read_bytes()
    bad = tmp_path / f"trunc{suffix}"
    bad.write_bytes(raw[: len(raw) - 300])
    expect_error(bad, "cannot read image")


def test_mhd_with_missing_raw(tmp_path):
    array = np.zeros((1, 4, 5, 6), np.int16)
    good = write_volume(Volume(array, AFFINE), tmp_path / "pair.mhd")
    (tmp_path / "pair.raw").unlink()
    expect_error(good, "cannot read image")


def test_2d_where_3d_needed(tmp_path):
    path = write_volume(Volume(np.zeros((1, 6, 7), np.float32), AFFINE), tmp_path / "flat.nii.gz")
    assert read_volume(path).spatial_dims == 2
    expect_error(path, "2D image .* 3D volume is needed", spatial_dims=3)


def test_3d_where_2d_needed(tmp_path):
    path = write_volume(Volume(np.zeros((1, 6, 7, 3), np.float32), AFFINE), tmp_path / "vol.nii.gz")
    expect_error(path, "3D volume .* 2D image is needed", spatial_dims=2)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_nan_inf_voxels(tmp_path, bad_value, suffix):
    array = np.ones((1, 5, 6, 7), np.float32)
    array[0, 2, 3, 4] = bad_value
    array[0, 1, 1, 1] = bad_value
    path = write_volume(Volume(array, AFFINE), tmp_path / f"nan{suffix}")
    message = expect_error(path, "NaN/Inf")
    assert "2 NaN/Inf" in message


def test_unsupported_output_suffix(tmp_path):
    with pytest.raises(VolumeError, match="unsupported output type"):
        write_volume(Volume(np.zeros((1, 3, 4, 5), np.uint8), AFFINE), tmp_path / "out.png")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha", ".mhd", ".hdr"])
def test_failed_write_leaves_nothing_and_keeps_old_file(tmp_path, suffix, monkeypatch):
    """A write that fails part-way removes its temp files and leaves an existing target untouched."""
    from medzoo.io import readers

    las = make_affine((1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.diag([-1.0, 1.0, 1.0]))
    old = Volume(np.zeros((1, 4, 5, 6), np.int16), las)
    target = write_volume(old, tmp_path / f"out{suffix}")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def failing(write):
        def wrapped(volume, tmp, *args):
            write(volume, tmp, *args)  # a partial file exists now
            raise OSError("disk full (simulated)")
        return wrapped

    monkeypatch.setattr(readers, "_write_nifti", failing(readers._write_nifti))
    monkeypatch.setattr(readers, "_write_itk", failing(readers._write_itk))
    import nibabel as nib

    def failing_save(img, filename):
        nib.loadsave.save(img, filename)
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(nib, "save", failing_save)
    new = Volume(np.ones((1, 4, 5, 6), np.int16), las)
    with pytest.raises(VolumeError, match="disk full") as info:
        write_volume(new, target)
    assert str(target) in str(info.value)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before
    np.testing.assert_array_equal(read_volume(target).array, old.array)
