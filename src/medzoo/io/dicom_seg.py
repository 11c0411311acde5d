"""A label map as a DICOM Segmentation object (DICOM SEG) over its source series, with highdicom.

PACS, 3D Slicer and OHIF take a SEG that references the series it was made from: each frame lies on one
source slice (its SOP instance UID and image position), the SEG shares the source's frame of reference,
study and patient, and carries one segment per label with the label's name. :func:`write_dicom_seg` maps
every voxel of each source slice into the label map through the two geometries (the slice's position,
orientation and pixel spacing; the map's affine), so the frames are right whatever the slice order, file
names or orientation; a label map that is not on the series' grid is refused rather than resampled.

Needs the ``dicom`` extra (``pip install 'medzoo[dicom]'``: pydicom and highdicom).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medzoo.errors import ConfigError, VolumeError
from medzoo.io.volume import Volume

log = logging.getLogger(__name__)

__all__ = ["check_available", "read_source_series", "write_dicom_seg"]

_GRID_TOLERANCE = 0.05  # voxels: how far a source pixel centre may sit from a label voxel centre
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def write_dicom_seg(
    labels: Volume,
    source: str | Path,
    out: str | Path,
    label_names: Mapping[int, str],
    *,
    series_uid: str | None = None,
    series_description: str = "medzoo segmentation",
    algorithm: str = "medzoo",
    algorithm_version: str | None = None,
) -> Path:
    """Write ``labels`` as a DICOM SEG referencing the series in ``source`` (atomically).

    Args:
        labels: (1, I, J, K) integer label map on the source series' grid (as ``medzoo predict`` writes it
            for a series read with :func:`medzoo.io.dicom.read_dicom_series`).
        source: the series folder the labels were predicted from.
        out: the ``.dcm`` file to write.
        label_names: class index -> name; one segment per foreground class (index > 0), numbered by its
            index, also when a class is absent from this map.
        series_uid: the source series (default: the folder's largest, as the reader picks).
        series_description: the SEG's series description.
        algorithm, algorithm_version: the algorithm named in every segment (default version: medzoo's).

    Returns:
        The path written.

    Raises:
        ConfigError: pydicom or highdicom is not installed.
        VolumeError: the folder holds no usable series, or ``labels`` is not on its grid.
    """
    hd, codes = _highdicom()
    import medzoo
    from medzoo.utils import atomic_write

    datasets = read_source_series(source, series_uid)
    frames = _frames_on_slices(labels, datasets, Path(source))
    version = algorithm_version or medzoo.__version__
    algorithm_id = hd.AlgorithmIdentificationSequence(
        name=algorithm, family=codes.DCM.ArtificialIntelligence, version=version
    )
    classes = sorted(int(k) for k in label_names if int(k) > 0)
    if not classes:
        raise ConfigError("a DICOM SEG needs at least one foreground label (index > 0)")
    if classes != list(range(1, len(classes) + 1)):
        raise ConfigError(f"DICOM SEG segments are numbered 1..N; the labels are {classes}")
    present = set(np.unique(frames).tolist()) - {0}
    unknown = present - set(classes)
    if unknown:
        raise VolumeError(source, f"the label map has values {sorted(unknown)} without a label name")
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=k, segment_label=str(label_names[k])[:64],
            segmented_property_category=codes.SCT.Tissue, segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm_id,
        )
        for k in classes
    ]  # fmt: skip
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=_series_number(datasets),
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="medzoo", manufacturer_model_name=algorithm,
        software_versions=f"medzoo {medzoo.__version__}", device_serial_number="0",
        series_description=series_description[:64],
    )  # fmt: skip
    return atomic_write(out, lambda tmp: seg.save_as(tmp))


def read_source_series(folder: str | Path, series_uid: str | None = None) -> list[Any]:
    """The single-frame image datasets of one series in ``folder`` (pixel data not loaded).

    Args:
        folder: a DICOM series folder.
        series_uid: the SeriesInstanceUID to take (default: the series with most files, as the reader does).

    Raises:
        VolumeError: no DICOM image files, the named series is absent, or its images are multi-frame.
    """
    _highdicom()
    import pydicom
    from pydicom.errors import InvalidDicomError

    folder = Path(folder)
    if not folder.is_dir():
        raise VolumeError(folder, "not a folder (DICOM SEG output needs the source series folder)")
    series: dict[str, list[Any]] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError):
            continue
        if "ImagePositionPatient" in ds and "SeriesInstanceUID" in ds:
            series.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    if not series:
        raise VolumeError(folder, "no DICOM images with a position in this folder")
    chosen = series_uid or max(series, key=lambda uid: len(series[uid]))
    if chosen not in series:
        raise VolumeError(folder, f"no DICOM series {chosen} (found: {', '.join(series)})")
    datasets = series[chosen]
    if any(int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise VolumeError(folder, "multi-frame images are not supported for DICOM SEG output (give single-frame slices)")
    return datasets


def _frames_on_slices(labels: Volume, datasets: list[Any], where: Path) -> np.ndarray:
    """(slices, rows, columns) uint8 frames: each source slice's pixels looked up in ``labels``."""
    array = np.asarray(labels.array)
    if array.ndim != 4 or array.shape[0] != 1:
        raise VolumeError(where, f"expected a (1, I, J, K) label map, got shape {array.shape}")
    grid = array[0]
    world_to_voxel = np.linalg.inv(labels.affine)
    frames = np.zeros((len(datasets), int(datasets[0].Rows), int(datasets[0].Columns)), dtype=np.uint8)
    for n, ds in enumerate(datasets):
        rows, cols = int(ds.Rows), int(ds.Columns)
        if (rows, cols) != frames.shape[1:]:
            raise VolumeError(where, "the series' slices differ in size; DICOM SEG output needs one grid")
        index = _slice_indices(ds, rows, cols, world_to_voxel)  # (3, rows, cols) float voxel indices
        rounded = np.rint(index)
        off = np.abs(index - rounded).max()
        inside = all((rounded[a] >= 0).all() and (rounded[a] < grid.shape[a]).all() for a in range(3))
        if off > _GRID_TOLERANCE or not inside:
            raise VolumeError(
                where, f"the label map is not on the grid of slice {ds.SOPInstanceUID} (off by {off:.2f} "
                "voxels or outside); predict from this series so the labels keep its grid"
            )
        i, j, k = rounded.astype(np.intp)
        frames[n] = grid[i, j, k]
    return frames


def _slice_indices(ds: Any, rows: int, cols: int, world_to_voxel: np.ndarray) -> np.ndarray:
    """Voxel indices (in the label map) of every pixel centre of one slice: (3, rows, cols)."""
    position = np.asarray(ds.ImagePositionPatient, dtype=float)
    orientation = np.asarray(ds.ImageOrientationPatient, dtype=float)
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    # DICOM: the first direction cosine runs along a row (column index c), the second down a column (row r)
    lps = (position[:, None, None] + orientation[:3, None, None] * (c * col_spacing)
           + orientation[3:, None, None] * (r * row_spacing))  # fmt: skip
    ras = np.einsum("ab,bij->aij", _LPS_TO_RAS, lps)
    return np.einsum("ab,bij->aij", world_to_voxel[:3, :3], ras) + world_to_voxel[:3, 3, None, None]


def _series_number(datasets: list[Any]) -> int:
    """A series number after the source's (SEG series conventionally follow their source)."""
    try:
        return int(datasets[0].SeriesNumber) + 1000
    except (AttributeError, TypeError, ValueError):
        return 1000


def check_available() -> None:
    """Raise :class:`~medzoo.errors.ConfigError` (saying what to install) when pydicom or highdicom is missing."""
    _highdicom()


def _highdicom() -> tuple[Any, Any]:
    try:
        import highdicom as hd
        from pydicom.sr.codedict import codes
    except ImportError as err:
        raise ConfigError(
            f"DICOM SEG output needs pydicom and highdicom ({err.name} is missing): pip install 'medzoo[dicom]'"
        ) from None
    return hd, codes
