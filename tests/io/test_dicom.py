"""Reading a DICOM series folder: a synthetic oblique series written slice by slice with SimpleITK."""

from __future__ import annotations

import numpy as np
import pytest

from medzoo.errors import VolumeError
from medzoo.io.dicom import read_dicom_series
from medzoo.io.readers import read_volume, write_volume

sitk = pytest.importorskip("SimpleITK")


def rotation(ax: float, az: float) -> np.ndarray:
    ax, az = np.deg2rad([ax, az])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ rx


SPACING = (0.8, 1.1, 2.5)
ORIGIN_LPS = np.array([-40.5, 25.25, 12.75])
DIRECTION_LPS = rotation(15.0, -20.0)  # columns: row direction, column direction, slice normal


def write_series(folder, array_zyx: np.ndarray, series_uid: str = "1.2.826.0.1.3680043.2.1125.1") -> None:
    """Write (z, y, x) int16 voxels as one DICOM file per slice with oblique geometry."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    orientation = DIRECTION_LPS[:, 0].tolist() + DIRECTION_LPS[:, 1].tolist()
    for k in range(array_zyx.shape[0]):
        image = sitk.GetImageFromArray(array_zyx[k])
        image.SetSpacing((SPACING[0], SPACING[1]))  # the writer takes pixel spacing from the image
        position = ORIGIN_LPS + k * SPACING[2] * DIRECTION_LPS[:, 2]
        tags = {
            "0008|0060": "MR",
            "0010|0010": "Phantom^Test",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.0",
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "\\".join(f"{v:.8f}" for v in orientation),
            "0028|0030": f"{SPACING[1]}\\{SPACING[0]}",  # row spacing (between rows, j) \ column spacing (i)
            "0018|0050": str(SPACING[2]),
            "0008|0018": f"{series_uid}.{k + 1}",
        }
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice_{k:03d}.dcm"))
        writer.Execute(image)


def expected_affine() -> np.ndarray:
    flip = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = flip @ DIRECTION_LPS @ np.diag(SPACING)
    affine[:3, 3] = flip @ ORIGIN_LPS
    return affine


def test_read_dicom_series_oblique(tmp_path):
    rng = np.random.default_rng(0)
    zyx = rng.integers(-1000, 3000, size=(6, 9, 7)).astype(np.int16)
    write_series(tmp_path / "series", zyx)
    volume = read_dicom_series(tmp_path / "series")
    assert volume.array.shape == (1, 7, 9, 6)  # (C, I=x, J=y, K=z)
    np.testing.assert_array_equal(volume.array[0], np.transpose(zyx, (2, 1, 0)))
    np.testing.assert_allclose(volume.affine, expected_affine(), atol=1e-4)
    np.testing.assert_allclose(volume.spacing, SPACING, atol=1e-4)
    # read_volume on a folder reads the series; it round trips through NIfTI
    again = read_volume(tmp_path / "series", spatial_dims=3)
    np.testing.assert_array_equal(again.array, volume.array)
    back = read_volume(write_volume(again, tmp_path / "series.nii.gz"))
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.affine, volume.affine, atol=1e-5)


def test_slice_order_follows_position_not_file_name(tmp_path):
    zyx = np.arange(4 * 5 * 3, dtype=np.int16).reshape(4, 5, 3)
    write_series(tmp_path / "s", zyx)
    for k, name in enumerate(sorted(p.name for p in (tmp_path / "s").iterdir())):
        (tmp_path / "s" / name).rename(tmp_path / "s" / f"z{3 - k}.dcm")  # reverse file name order
    volume = read_dicom_series(tmp_path / "s")
    np.testing.assert_array_equal(volume.array[0], np.transpose(zyx, (2, 1, 0)))


def test_picks_the_series_by_uid(tmp_path):
    write_series(tmp_path / "mixed", np.zeros((3, 4, 5), np.int16), series_uid="1.2.3.1")
    write_series(tmp_path / "other", np.ones((2, 4, 5), np.int16), series_uid="1.2.3.2")
    for p in (tmp_path / "other").iterdir():
        p.rename(tmp_path / "mixed" / f"b_{p.name}")
    assert read_dicom_series(tmp_path / "mixed").array.shape == (1, 5, 4, 3)  # the larger series
    chosen = read_dicom_series(tmp_path / "mixed", series_uid="1.2.3.2")
    assert chosen.array.shape == (1, 5, 4, 2) and chosen.array.min() == 1
    with pytest.raises(VolumeError, match="no DICOM series 9.9"):
        read_dicom_series(tmp_path / "mixed", series_uid="9.9")


def test_empty_or_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no dicom here")
    with pytest.raises(VolumeError, match="no DICOM series"):
        read_volume(tmp_path / "empty")
    with pytest.raises(VolumeError, match="folder not found"):
        read_dicom_series(tmp_path / "absent")
