"""Reading one case: its modalities stacked as channels and its label mapped to classes 0..K-1.

Every inconsistency (a missing file, modalities or label on different grids, label values outside the
declared classes, an empty label map, NaN voxels) is a :class:`~medzoo.errors.DataError` naming the case.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from medzoo.data.case import Case, DatasetInfo
from medzoo.errors import DataError, MedzooError
from medzoo.io.volume import Volume

log = logging.getLogger(__name__)

#: Affines of the modalities and the label of one case may differ by this much (mm) — float32 headers.
AFFINE_ATOL = 1e-3


def read_volume_any(path: str | Path) -> Volume:
    """Read a volume with :func:`medzoo.io.readers.read_volume`."""
    from medzoo.io.readers import read_volume

    return read_volume(path)


def _read(case: Case, path: Path, what: str) -> Volume:
    if not Path(path).exists():  # a file, or a DICOM series folder
        raise DataError(f"case {case.case_id}: the {what} file {path} does not exist")
    try:
        return read_volume_any(path)
    except MedzooError as err:
        raise DataError(f"case {case.case_id}: cannot use the {what} file ({err})") from err


def _same_grid(a: Volume, b: Volume) -> bool:
    return a.spatial_shape == b.spatial_shape and bool(np.allclose(a.affine, b.affine, atol=AFFINE_ATOL))


def load_image(case: Case, modalities: list[str] | None = None) -> Volume:
    """The case's image as float32 ``(C, I, J, K)``, modalities stacked in order.

    Raises:
        DataError: missing file, modalities on different grids, wrong channel count, NaN/Inf voxels.
    """
    parts = [_read(case, p, f"image ({Path(p).name})") for p in case.image_paths]
    first = parts[0]
    for p, vol in zip(case.image_paths[1:], parts[1:]):
        if not _same_grid(first, vol):
            raise DataError(
                f"case {case.case_id}: modality {Path(p).name} has shape {vol.spatial_shape} / affine differing "
                f"from {Path(case.image_paths[0]).name} ({first.spatial_shape}); resample them to one grid"
            )
    array = np.concatenate([v.array.astype(np.float32, copy=False) for v in parts], axis=0)
    if modalities is not None and array.shape[0] != len(modalities):
        raise DataError(
            f"case {case.case_id}: image has {array.shape[0]} channels but the dataset declares "
            f"{len(modalities)} modalities {modalities}"
        )
    finite = np.isfinite(array)
    if not finite.all():
        bad = np.flatnonzero(~finite.reshape(array.shape[0], -1).all(axis=1))
        names = [modalities[int(c)] if modalities and len(modalities) == array.shape[0] else f"channel {int(c)}"
                 for c in bad]
        raise DataError(
            f"case {case.case_id}: image has {int((~finite).sum())} NaN or infinite voxel(s) in {', '.join(names)}; "
            "fix or exclude the case (or skip bad cases)"
        )
    return Volume(array, first.affine, {"case_id": case.case_id, "path": str(case.image_paths[0])})


def map_labels(array: np.ndarray, info: DatasetInfo, case_id: str) -> np.ndarray:
    """Raw label values -> contiguous class indices (uint8), checking every value is declared.

    Args:
        array: raw label map, any numeric dtype (float labels must hold integral values).
        info: gives ``label_mapping`` (raw -> class) or, when None, the classes 0..K-1.
        case_id: named in errors.

    Raises:
        DataError: non-integral values or values not declared by the dataset.
    """
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise DataError(f"case {case_id}: label map has NaN or infinite voxels")
        rounded = np.rint(array)
        if not np.array_equal(rounded, array):
            raise DataError(f"case {case_id}: label map holds non-integer values (is it an image?)")
        array = rounded.astype(np.int64)
    values = np.unique(array)
    mapping = info.label_mapping or {k: k for k in info.labels}
    bad = [int(v) for v in values if int(v) not in mapping]
    if bad:
        raise DataError(
            f"case {case_id}: label values {bad[:10]} are not among the declared labels {sorted(mapping)}"
        )
    if all(k == v for k, v in mapping.items()) and array.dtype == np.uint8:
        return array
    if values.size and int(values.min()) >= 0 and int(values.max()) < 65536:
        lut = np.zeros(int(values.max()) + 1, dtype=np.uint8)
        for raw, cls in mapping.items():
            if 0 <= raw < lut.size:
                lut[raw] = cls
        return lut[array.astype(np.int64, copy=False)]
    out = np.zeros(array.shape, dtype=np.uint8)
    for raw, cls in mapping.items():
        out[array == raw] = cls
    return out


def load_label(case: Case, info: DatasetInfo, reference: Volume | None = None, allow_empty: bool = False) -> Volume:
    """The case's label as uint8 ``(1, I, J, K)`` with classes 0..K-1.

    Args:
        case: the case (must have a label_path).
        info: the dataset (label mapping and classes).
        reference: the image; the label must lie on its grid.
        allow_empty: accept a label map without any foreground voxel.

    Raises:
        DataError: missing file, grid mismatch, undeclared values, empty label map.
    """
    if case.label_path is None:
        raise DataError(f"case {case.case_id}: has no label file")
    vol = _read(case, case.label_path, "label")
    if vol.num_channels != 1:
        raise DataError(f"case {case.case_id}: label map has {vol.num_channels} channels, expected 1")
    if reference is not None and not _same_grid(reference, vol):
        if reference.spatial_shape != vol.spatial_shape:
            problem = f"shape {vol.spatial_shape} differs from the image's {reference.spatial_shape}"
        else:
            diff = float(np.abs(reference.affine - vol.affine).max())
            problem = f"affine differs from the image's (max difference {diff:.4g})"
        raise DataError(f"case {case.case_id}: label {problem}; the label must lie on the image grid")
    mapped = map_labels(vol.array, info, case.case_id)
    if not allow_empty and not mapped.any():
        raise DataError(f"case {case.case_id}: label map is empty (no foreground voxel)")
    return Volume(mapped, reference.affine if reference is not None else vol.affine,
                  {"case_id": case.case_id, "path": str(case.label_path)})


def load_case(case: Case, info: DatasetInfo, allow_empty: bool = False) -> tuple[Volume, Volume | None]:
    """Read a case: image float32 ``(C, I, J, K)`` and label uint8 ``(1, I, J, K)`` (or None).

    Args:
        case: a case from ``info.cases`` or ``info.test_cases``.
        info: its dataset.
        allow_empty: accept a label map without foreground.

    Raises:
        DataError: naming the case, for any inconsistency.
    """
    image = load_image(case, info.modalities if info.modalities else None)
    label = None if case.label_path is None else load_label(case, info, image, allow_empty)
    return image, label


def iter_good_cases(cases: list[Case], info: DatasetInfo, skip_bad_cases: bool = False):
    """Yield ``(case, image, label)``; with ``skip_bad_cases`` a bad case is logged and skipped.

    Raises:
        DataError: the first bad case, unless ``skip_bad_cases``.
    """
    for case in cases:
        try:
            image, label = load_case(case, info)
        except DataError as err:
            if not skip_bad_cases:
                raise
            log.warning("skipping bad case %s: %s", case.case_id, err)
            continue
        yield case, image, label
