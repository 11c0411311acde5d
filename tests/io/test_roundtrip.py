"""Round trips through every writable format keep voxels, dtype and the (oblique) affine."""

from __future__ import annotations

import numpy as np
import pytest

from medzoo.io.readers import read_volume, write_volume
from medzoo.io.volume import Volume, make_affine

ATOL = 1e-5


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    ax, ay, az = np.deg2rad([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


OBLIQUE = make_affine((0.8, 1.1, 2.5), (-40.125, 25.5, 12.75), rotation(20.0, -15.0, 30.0))


def random_array(dtype: str, channels: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (channels, 7, 9, 5)
    if dtype == "float32":
        return rng.normal(0.0, 100.0, size=shape).astype(np.float32)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)


FORMATS = [".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"]


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("dtype", ["uint8", "int16", "float32"])
@pytest.mark.parametrize("channels", [1, 3])
def test_roundtrip_keeps_voxels_dtype_affine(tmp_path, suffix, dtype, channels):
    array = random_array(dtype, channels)
    path = write_volume(Volume(array, OBLIQUE), tmp_path / f"img{suffix}")
    back = read_volume(path)
    assert back.array.dtype == np.dtype(dtype)
    assert back.array.shape == array.shape
    np.testing.assert_array_equal(back.array, array)
    np.testing.assert_allclose(back.affine, OBLIQUE, atol=ATOL)
    np.testing.assert_allclose(back.spacing, (0.8, 1.1, 2.5), atol=ATOL)


@pytest.mark.parametrize("middle", [".nrrd", ".mha", ".mhd", ".nhdr"])
def test_cross_format_nifti_itk_nifti(tmp_path, middle):
    array = random_array("float32", 2, seed=3)
    first = write_volume(Volume(array, OBLIQUE), tmp_path / "a.nii.gz")
    mid = write_volume(read_volume(first), tmp_path / f"b{middle}")
    last = write_volume(read_volume(mid), tmp_path / "c.nii.gz")
    back = read_volume(last)
    np.testing.assert_array_equal(back.array, array)
    np.testing.assert_allclose(back.affine, OBLIQUE, atol=ATOL)


def test_itk_geometry_matches_nibabel_world_coordinates(tmp_path):
    """The same voxel lands at the same RAS point whether SimpleITK or nibabel reads the file."""
    import SimpleITK as sitk

    array = random_array("int16", 1)
    path = write_volume(Volume(array, OBLIQUE), tmp_path / "a.nrrd")
    image = sitk.ReadImage(str(path))
    ijk = (3, 5, 2)
    lps = np.array(image.TransformIndexToPhysicalPoint(ijk))
    ras = OBLIQUE @ np.array([*ijk, 1.0])
    np.testing.assert_allclose(ras[:3], lps * np.array([-1, -1, 1]), atol=ATOL)
    # and the voxel value at (i, j, k) is the one SimpleITK has at index (i, j, k)
    assert image.GetPixel(ijk) == array[0, 3, 5, 2]


def test_nifti_multichannel_is_4d_ijkc_on_disk(tmp_path):
    import nibabel as nib

    array = random_array("float32", 2)
    path = write_volume(Volume(array, OBLIQUE), tmp_path / "m.nii.gz")
    on_disk = np.asanyarray(nib.load(str(path)).dataobj)
    assert on_disk.shape == (7, 9, 5, 2)
    np.testing.assert_array_equal(on_disk[..., 1], array[1])


def test_nifti_vector_5d_is_read_as_channels(tmp_path):
    import nibabel as nib

    data = np.arange(4 * 5 * 6 * 3, dtype=np.float32).reshape(4, 5, 6, 1, 3)
    nib.save(nib.Nifti1Image(data, OBLIQUE), str(tmp_path / "v.nii"))
    back = read_volume(tmp_path / "v.nii")
    assert back.array.shape == (3, 4, 5, 6)
    np.testing.assert_array_equal(back.array[2], data[:, :, :, 0, 2])


def test_scaled_nifti_is_read_with_its_scaling(tmp_path):
    import nibabel as nib

    img = nib.Nifti1Image(np.arange(60, dtype=np.int16).reshape(3, 4, 5), OBLIQUE)
    img.header.set_slope_inter(2.0, 1.0)
    nib.save(img, str(tmp_path / "s.nii"))
    back = read_volume(tmp_path / "s.nii")
    assert back.array[0, 2, 3, 4] == pytest.approx(2.0 * 59 + 1.0)


def test_2d_nifti_reads_as_one_channel_2d(tmp_path):
    array = random_array("int16", 1)[:, :, :, 0]
    path = write_volume(Volume(array, OBLIQUE), tmp_path / "flat.nii.gz")
    back = read_volume(path)
    assert back.array.shape == (1, 7, 9)
    assert back.spatial_dims == 2
    np.testing.assert_array_equal(back.array, array)
    np.testing.assert_allclose(back.affine, OBLIQUE, atol=ATOL)


def test_single_slice_3d_squeezed_with_spatial_dims_2(tmp_path):
    array = random_array("uint8", 1)[:, :, :, :1]
    path = write_volume(Volume(array, OBLIQUE), tmp_path / "slice.nii.gz")
    assert read_volume(path).array.shape == (1, 7, 9, 1)
    assert read_volume(path, spatial_dims=2).array.shape == (1, 7, 9)


def test_bool_and_float16_are_written_as_uint8_and_float32(tmp_path):
    mask = random_array("uint8", 1) > 128
    back = read_volume(write_volume(Volume(mask, OBLIQUE), tmp_path / "mask.nii.gz"))
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, mask.astype(np.uint8))
    half = random_array("float32", 1).astype(np.float16)
    back = read_volume(write_volume(Volume(half, OBLIQUE), tmp_path / "half.nrrd"))
    assert back.array.dtype == np.float32
    np.testing.assert_array_equal(back.array, half.astype(np.float32))


def test_public_api_exports():
    import medzoo

    assert medzoo.read_volume is read_volume
    assert medzoo.write_volume is write_volume


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_2d_itk_roundtrip_in_plane(tmp_path, suffix):
    in_plane = make_affine((0.7, 1.3, 1.0), (10.5, -3.25, 0.0), rotation(0.0, 0.0, 25.0))
    array = random_array("int16", 2)[:, :, :, 0]
    back = read_volume(write_volume(Volume(array, in_plane), tmp_path / f"flat{suffix}"))
    assert back.array.shape == (2, 7, 9)
    np.testing.assert_array_equal(back.array, array)
    np.testing.assert_allclose(back.affine[:, [0, 1, 3]], in_plane[:, [0, 1, 3]], atol=ATOL)


def test_2d_itk_refuses_out_of_plane_geometry(tmp_path):
    from medzoo.errors import VolumeError

    array = random_array("int16", 1)[:, :, :, 0]
    with pytest.raises(VolumeError, match="out of that plane"):
        write_volume(Volume(array, OBLIQUE), tmp_path / "flat.nrrd")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dtype", ["int64", "uint16", "int8", "float64"])
def test_other_dtypes_keep_their_type_in_nifti(tmp_path, dtype):
    array = np.arange(60).reshape(1, 3, 4, 5).astype(dtype)
    back = read_volume(write_volume(Volume(array, OBLIQUE), tmp_path / "d.nii.gz"))
    assert back.array.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back.array, array)
