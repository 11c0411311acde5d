"""Read and write :class:`~medzoo.io.volume.Volume` files, the format chosen by the file's suffix.

Supported formats:

=====================  ========  =========  ==============================================================
suffix                 read      write      library / notes
=====================  ========  =========  ==============================================================
``.nii``, ``.nii.gz``  yes       yes        nibabel; 4D ``(I, J, K, C)`` <-> ``(C, I, J, K)``
``.hdr``, ``.img``     yes       yes        nibabel Analyze 7.5 (e.g. iSeg); see "Analyze" below
``.nrrd``, ``.nhdr``   yes       yes        SimpleITK; vector images <-> channels
``.mha``, ``.mhd``     yes       yes        SimpleITK (MetaImage); vector images <-> channels
a folder               yes       no         a DICOM series (:func:`medzoo.io.dicom.read_dicom_series`)
=====================  ========  =========  ==============================================================

Geometry: every reader returns the array channel-first in the file's voxel order and the 4x4 affine that
maps voxel indices to RAS+ millimetres. SimpleITK works with ``(z, y, x)`` arrays and LPS coordinates; both
are converted on read and back on write, so a NIfTI -> NRRD -> NIfTI round trip gives back the same array
and affine.

Analyze: the format stores voxel sizes and an integer voxel origin, no rotation and no axis flips
(nibabel reads the i axis as pointing left, i.e. a linear part ``diag(-sx, sy, sz)``). Writing a volume
whose affine Analyze cannot hold exactly raises :class:`~medzoo.errors.VolumeError` (rather than silently
dropping the rotation); write NIfTI (``.nii.gz``) instead. Volumes read from Analyze files always write
back.

Errors: every problem (missing, truncated or corrupt file, not an image, unsupported suffix, a 2D file
where 3D is needed, NaN/Inf voxels) raises :class:`~medzoo.errors.VolumeError` naming the file and what is
wrong, in one line. Writes are atomic: a failed write leaves no partial file behind.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medzoo.errors import VolumeError
from medzoo.io.sitk_convert import LPS_TO_RAS as _LPS_TO_RAS
from medzoo.io.sitk_convert import check_finite as _check_finite
from medzoo.io.sitk_convert import one_line as _one_line
from medzoo.io.sitk_convert import sitk_to_array_affine
from medzoo.io.volume import Volume
from medzoo.utils import atomic_write

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ANALYZE_SUFFIXES = (".hdr", ".img")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
READ_SUFFIXES = NIFTI_SUFFIXES + ANALYZE_SUFFIXES + ITK_SUFFIXES
WRITE_SUFFIXES = READ_SUFFIXES

_ANALYZE_DTYPES = tuple(np.dtype(t) for t in ("uint8", "int16", "int32", "float32", "float64"))



def volume_suffix(path: str | Path) -> str:
    """The format suffix of ``path`` (``".nii.gz"``, ``".nrrd"``, ...), lower case; ``""`` if unknown."""
    name = Path(path).name.lower()
    for suffix in sorted(READ_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return ""


def is_volume_file(path: str | Path) -> bool:
    """True when ``path`` has a suffix :func:`read_volume` understands."""
    return bool(volume_suffix(path))


# --------------------------------------------------------------------------------------------------- read


def read_volume(path: str | Path, *, spatial_dims: int | None = None) -> Volume:
    """Read an image file (or a DICOM series folder) as a :class:`Volume`.

    Args:
        path: a ``.nii``/``.nii.gz``, Analyze ``.hdr``/``.img``, ``.nrrd``/``.nhdr``, ``.mha``/``.mhd``
            file, or a folder holding one DICOM series.
        spatial_dims: None keeps what the file holds; 3 requires a 3D image (a 2D file raises); 2 requires
            a 2D image (a 3D file with a single slice along the last axis is squeezed to 2D).

    Returns:
        Volume with ``array`` of shape (C, I, J, K) (or (C, I, J) for 2D) in the file's dtype (after the
        file's own intensity scaling, if any) and the voxel-to-RAS+ affine. ``meta["path"]`` is the source.

    Raises:
        VolumeError: the file is missing, unreadable, not an image, of an unsupported type, of the wrong
            dimensionality, or holds NaN/Inf voxels.
    """
    path = Path(path)
    if spatial_dims not in (None, 2, 3):
        raise ValueError(f"spatial_dims must be None, 2 or 3, got {spatial_dims!r}")
    if path.is_dir():
        from medzoo.io.dicom import read_dicom_series

        volume = read_dicom_series(path)
    else:
        if not path.exists():
            raise VolumeError(path, "file not found")
        suffix = volume_suffix(path)
        if not suffix:
            raise VolumeError(
                path, f"unsupported file type; medzoo reads {', '.join(READ_SUFFIXES)} or a DICOM folder"
            )
        if not path.is_file():
            raise VolumeError(path, "not a regular file")
        if suffix in NIFTI_SUFFIXES or suffix in ANALYZE_SUFFIXES:
            array, affine = _read_nibabel(path, suffix)
        else:
            array, affine = _read_itk(path)
        volume = Volume(array, affine, {"path": str(path)})
    volume = _check_dims(volume, path, spatial_dims)
    _check_finite(volume.array, path)
    return volume


def _check_dims(volume: Volume, path: Path, spatial_dims: int | None) -> Volume:
    if spatial_dims is None or volume.spatial_dims == spatial_dims:
        return volume
    if spatial_dims == 3:
        raise VolumeError(
            path, f"is a 2D image (shape {volume.spatial_shape}) but a 3D volume is needed"
        )
    if volume.spatial_shape[-1] == 1:
        return Volume(volume.array[..., 0], volume.affine, volume.meta)
    raise VolumeError(
        path, f"is a 3D volume (shape {volume.spatial_shape}) but a 2D image is needed"
    )


def _channels_first(data: np.ndarray, path: Path) -> np.ndarray:
    """File array (I, J[, K[, C]]) or NIfTI vector (I, J, K, 1, C) -> channel-first (C, I, J[, K])."""
    if data.ndim == 5 and data.shape[3] == 1:  # NIfTI vector convention: components on the 5th axis
        data = data[:, :, :, 0, :]
    if data.ndim == 2 or data.ndim == 3:
        return data[None]
    if data.ndim == 4:
        return np.moveaxis(data, 3, 0)
    raise VolumeError(path, f"has {data.ndim} dimensions (shape {data.shape}); expected 2D, 3D or 4D")


def _read_nibabel(path: Path, suffix: str) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    try:
        if suffix == ".nii.gz":
            img = _load_nifti_gz(path)
        else:
            img = nib.load(str(path))
        if not hasattr(img, "dataobj") or not hasattr(img, "affine"):
            raise VolumeError(path, "not an image volume")
        data = np.asanyarray(img.dataobj)
        affine = img.affine
    except VolumeError:
        raise
    except MemoryError:
        raise
    except Exception as err:  # nibabel raises many types for bad files
        raise VolumeError(path, f"cannot read image ({_describe_read_error(err)})") from err
    if affine is None:
        affine = np.eye(4)
    data = np.asarray(data)
    return np.ascontiguousarray(_channels_first(data, path)), np.asarray(affine, dtype=np.float64)


def _describe_read_error(err: BaseException) -> str:
    if isinstance(err, (EOFError, zlib.error, gzip.BadGzipFile)):
        return f"corrupt or truncated gzip data: {_one_line(err)}"
    text = str(err).lower()
    if "expected" in text and "bytes" in text:
        return f"file is truncated: {_one_line(err)}"
    if type(err).__name__ == "ImageFileError":
        return f"not a recognised image file: {_one_line(err)}"
    return _one_line(err)


def _load_nifti_gz(path: Path):
    """Decompress a whole ``.nii.gz`` (verifying its CRC and length) and parse it as NIfTI-1 or NIfTI-2."""
    import nibabel as nib

    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x1f\x8b":
        raise VolumeError(path, "not a gzip file (a .nii.gz must be gzip-compressed NIfTI)")
    try:
        data = gzip.decompress(raw)
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as err:
        raise VolumeError(path, f"corrupt or truncated gzip data ({_one_line(err)})") from err
    if len(data) < 348:
        raise VolumeError(path, f"not a NIfTI file (only {len(data)} bytes after decompression)")
    sizes = {int.from_bytes(data[:4], "little"), int.from_bytes(data[:4], "big")}
    if 348 in sizes:
        cls = nib.Nifti1Image
    elif 540 in sizes:
        cls = nib.Nifti2Image
    else:
        raise VolumeError(path, "not a NIfTI file (bad header size field)")
    return cls.from_bytes(data)


def _read_itk(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise VolumeError(
            path, f"cannot read image (corrupt, truncated or not an image: {_one_line(err)})"
        ) from err
    return sitk_to_array_affine(image, path)


# -------------------------------------------------------------------------------------------------- write


def write_volume(volume: Volume, path: str | Path) -> Path:
    """Write ``volume`` to ``path`` atomically, the format chosen by the suffix.

    Args:
        volume: array (C, I, J[, K]) and affine. One channel is written as a 3D (2D) image; several
            channels as 4D NIfTI ``(I, J, K, C)`` or a vector image (NRRD/MetaImage components).
        path: target file (``.nii``, ``.nii.gz``, ``.hdr``/``.img``, ``.nrrd``/``.nhdr``, ``.mha``/``.mhd``).
            Parent folders are created.

    Returns:
        The path written (for Analyze, the ``.hdr`` or ``.img`` as given; both files are written).

    Raises:
        VolumeError: unsupported suffix, an affine Analyze cannot store, or the library failed to write.
            Nothing is left behind on failure.
    """
    path = Path(path)
    suffix = volume_suffix(path)
    if not suffix:
        raise VolumeError(
            path, f"unsupported output type; medzoo writes {', '.join(WRITE_SUFFIXES)}"
        )
    array = _writable_dtype(np.asarray(volume.array), path)
    volume = Volume(array, volume.affine, volume.meta)
    if suffix in ITK_SUFFIXES:
        _check_itk_2d(volume, path)
    try:
        if suffix in NIFTI_SUFFIXES:
            atomic_write(path, lambda tmp: _write_nifti(volume, tmp))
        elif suffix in ANALYZE_SUFFIXES:
            _write_analyze(volume, path)
        elif suffix == ".mhd":
            _write_pair(path, (".mhd", ".raw"), lambda tmp: _write_itk(volume, tmp))
        elif suffix == ".nhdr":
            _write_pair(path, (".nhdr", ".raw"), lambda tmp: _write_itk(volume, tmp))
        else:
            atomic_write(path, lambda tmp: _write_itk(volume, tmp))
    except VolumeError:
        raise
    except (OSError, RuntimeError, ValueError) as err:
        raise VolumeError(path, f"cannot write image ({_one_line(err)})") from err
    return path


def _writable_dtype(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype == np.float16:
        log.debug("%s: float16 is not storable in every format, writing float32", path)
        return array.astype(np.float32)
    if array.dtype.kind not in "uif":
        raise VolumeError(path, f"cannot write voxels of dtype {array.dtype}")
    return array


def _file_array(volume: Volume) -> np.ndarray:
    """Channel-first (C, I, J[, K]) -> file order: (I, J[, K]) for one channel, else (I, J, K, C)."""
    array = volume.array
    if array.shape[0] == 1:
        return array[0]
    if array.ndim == 3:  # 2D with channels: (I, J, 1, C)
        return np.moveaxis(array, 0, 2)[:, :, None, :]
    return np.moveaxis(array, 0, 3)


def _write_nifti(volume: Volume, tmp: Path) -> None:
    import nibabel as nib

    data = np.asarray(_file_array(volume))
    # an explicit dtype keeps int64/uint64 as they are (nibabel otherwise refuses them)
    img = nib.Nifti1Image(data, volume.affine, dtype=data.dtype)
    img.header.set_qform(volume.affine, code=1)
    img.header.set_sform(volume.affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(tmp))


def _analyze_image(volume: Volume, path: Path):
    """An nibabel SPM2-Analyze image holding ``volume``, or VolumeError if Analyze cannot store it exactly.

    Analyze stores voxel sizes and a whole-voxel origin (SPM's ``origin`` field), no rotation and no flips:
    nibabel reads the linear part as ``diag(-sx, sy, sz)``. The header's affine (as nibabel will read it
    back) must equal ``volume.affine``.
    """
    import nibabel as nib

    data = np.asarray(_file_array(volume))
    if data.ndim == 2:
        data = data[:, :, None]
    if data.dtype not in _ANALYZE_DTYPES:
        raise VolumeError(
            path,
            f"Analyze .hdr/.img cannot store {data.dtype} voxels (only uint8, int16, int32, float32, "
            "float64); cast the array or write NIfTI (.nii.gz)",
        )
    affine = volume.affine
    linear = affine[:3, :3]
    zooms = np.abs(np.diag(linear))
    header = nib.Spm2AnalyzeHeader()
    header.set_data_shape(data.shape)
    header.set_data_dtype(data.dtype)
    header.set_zooms(tuple(float(z) for z in zooms) + (1.0,) * (data.ndim - 3))
    # candidate origin fields: the whole voxel at world (0, 0, 0) (1-based), or zero, which means the image
    # centre (what plain Analyze files such as iSeg's carry, often a half-voxel position)
    candidates = [np.zeros(3)]
    if np.all(zooms > 0):
        voxel_origin = -np.linalg.solve(np.diag([-zooms[0], zooms[1], zooms[2]]), affine[:3, 3])
        if np.all(np.abs(voxel_origin) < 30000):
            candidates.insert(0, np.round(voxel_origin) + 1)
    for origin in candidates:
        header["origin"][:3] = origin
        stored = header.get_best_affine()
        if np.allclose(stored, affine, atol=1e-5):
            break
    else:
        raise VolumeError(
            path,
            "Analyze .hdr/.img cannot store this affine (only voxel sizes along L-A-S axes and a whole-voxel "
            "origin inside the image; no rotation or flips); write NIfTI (.nii.gz) to keep the geometry",
        )
    return nib.Spm2AnalyzeImage(data, stored, header)


def _write_analyze(volume: Volume, path: Path) -> None:
    import nibabel as nib

    img = _analyze_image(volume, path)
    _write_pair(path, (".hdr", ".img"), lambda tmp_hdr: nib.save(img, str(tmp_hdr)))


def _write_pair(path: Path, suffixes: tuple[str, str], write: Callable[[Path], None]) -> None:
    """Write a header/data file pair into a private temp folder, then move data file and header in place.

    ``path`` ends with ``suffixes[0]`` or ``suffixes[1]``; the header names its data file by the final
    name, so both are written under their final names in a temp folder beside them.
    """
    base = path.name[: -len(volume_suffix(path))]
    header = path.parent / f"{base}{suffixes[0]}"
    data = path.parent / f"{base}{suffixes[1]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{base}.", dir=path.parent))
    try:
        write(tmp_dir / header.name)
        if (tmp_dir / data.name).exists():
            os.replace(tmp_dir / data.name, data)
        os.replace(tmp_dir / header.name, header)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def volume_to_sitk(volume: Volume):
    """A :class:`Volume` -> SimpleITK image (several channels become vector components), LPS geometry."""
    import SimpleITK as sitk

    array = volume.array
    dim = volume.spatial_dims
    spatial = tuple(range(dim, 0, -1))  # (K, J, I) order of channel-first axes 1..dim
    if array.shape[0] == 1:
        image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array[0], [a - 1 for a in spatial])))
    else:
        image = sitk.GetImageFromArray(
            np.ascontiguousarray(np.transpose(array, (*spatial, 0))), isVector=True
        )
    linear = _LPS_TO_RAS @ volume.affine[:3, :3]
    offset = _LPS_TO_RAS @ volume.affine[:3, 3]
    spacing = np.linalg.norm(linear[:, :dim], axis=0)
    if dim == 2:
        direction = linear[:2, :2] / np.linalg.norm(linear[:2, :2], axis=0, keepdims=True)
    else:
        direction = linear / spacing[None, :]
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(v) for v in offset[:dim]])
    image.SetDirection([float(v) for v in direction.ravel()])
    return image


def _check_itk_2d(volume: Volume, path: Path) -> None:
    """A 2D ITK image has in-plane (x, y) geometry only; refuse a 2D volume placed out of that plane."""
    affine = volume.affine
    if volume.spatial_dims == 2 and not (
        np.allclose(affine[2, :2], 0.0, atol=1e-6) and abs(affine[2, 3]) < 1e-6
    ):
        raise VolumeError(
            path,
            "a 2D NRRD/MetaImage holds only in-plane (x, y) geometry but this 2D image is placed out of that "
            "plane; write NIfTI (.nii.gz) to keep its geometry",
        )


def _write_itk(volume: Volume, tmp: Path) -> None:
    import SimpleITK as sitk

    image = volume_to_sitk(volume)
    compress = volume_suffix(tmp) in (".nrrd", ".mha")
    sitk.WriteImage(image, str(tmp), useCompression=compress)
