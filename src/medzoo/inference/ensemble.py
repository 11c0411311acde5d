"""Saved probabilities and their ensembles: ``<case>_probabilities.npz`` files in, label maps out.

``medzoo predict --save-probabilities`` writes, next to each label map, ``<case>_probabilities.npz`` with
``probabilities`` (float16 (K, *S) on the scan's own grid) and ``affine`` (4x4); a region-based run adds
``regions_class_order`` (the label value each sigmoid channel paints, in painting order). An ensemble of
several folders is the mean of their probabilities, accumulated one folder at a time so memory stays that
of one case's probabilities plus one running sum, whatever the number of members.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from medzoo.errors import DataError
from medzoo.io.readers import write_volume
from medzoo.io.volume import Volume
from medzoo.utils import atomic_write

log = logging.getLogger(__name__)

__all__ = [
    "PROBABILITIES_SUFFIX",
    "ensemble_folders",
    "probabilities_to_labels",
    "read_probabilities",
    "write_probabilities",
]

PROBABILITIES_SUFFIX = "_probabilities.npz"


def write_probabilities(
    path: str | Path, probabilities: np.ndarray, affine: np.ndarray, regions_class_order: Sequence[int] | None = None
) -> Path:
    """Write a ``<case>_probabilities.npz`` atomically (probabilities stored as float16)."""
    extra = {} if regions_class_order is None else {"regions_class_order": np.asarray(regions_class_order, np.int64)}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, probabilities=np.asarray(probabilities).astype(np.float16, copy=False),
                     affine=np.asarray(affine, np.float64), **extra)

    return atomic_write(path, write)


def read_probabilities(path: str | Path) -> tuple[np.ndarray, np.ndarray, list[int] | None]:
    """(probabilities float32 (K, *S), affine (4, 4), regions_class_order or None) of a saved file.

    Raises:
        DataError: not a probabilities file written by medzoo.
    """
    try:
        with np.load(path) as d:
            probs = d["probabilities"].astype(np.float32)
            affine = d["affine"].astype(np.float64)
            order = [int(v) for v in d["regions_class_order"]] if "regions_class_order" in d else None
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a probabilities file from `medzoo predict --save-probabilities` ({err})") from err
    return probs, affine, order


def probabilities_to_labels(probabilities: np.ndarray, regions_class_order: Sequence[int] | None = None) -> np.ndarray:
    """Label map (*S) from probabilities (K, *S).

    Softmax outputs: the argmax (class indices). Region (sigmoid) outputs: each region whose probability
    exceeds 0.5 paints its label value, in ``regions_class_order`` order, so a nested region painted later
    (e.g. BraTS enhancing tumour inside the tumour core inside the whole tumour) wins, as nnU-Net does.
    """
    if regions_class_order is None:
        return np.argmax(probabilities, axis=0).astype(np.uint8 if probabilities.shape[0] <= 256 else np.int16)
    if len(regions_class_order) != probabilities.shape[0]:
        raise DataError(
            f"{probabilities.shape[0]} region channels but regions_class_order has {len(regions_class_order)} values"
        )
    dtype = np.uint8 if max(regions_class_order, default=0) < 256 else np.int16
    labels = np.zeros(probabilities.shape[1:], dtype=dtype)
    for channel, value in enumerate(regions_class_order):
        labels[probabilities[channel] > 0.5] = value
    return labels


def _case_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder of saved probabilities")
    files = {p.name[: -len(PROBABILITIES_SUFFIX)]: p for p in folder.glob(f"*{PROBABILITIES_SUFFIX}")}
    if not files:
        raise DataError(f"{folder}: no *{PROBABILITIES_SUFFIX} files (predict with --save-probabilities)")
    return files


def ensemble_folders(
    inputs: Sequence[str | Path],
    output_dir: str | Path,
    *,
    save_probabilities: bool = False,
    postprocess: Callable[[np.ndarray], np.ndarray] | None = None,
    suffix: str = ".nii.gz",
) -> list[Path]:
    """Average the saved probabilities of several prediction folders and write the ensemble's label maps.

    Args:
        inputs: folders written by ``predict --save-probabilities`` (two or more), with the same cases.
        output_dir: where ``<case><suffix>`` label maps go (and ``<case>_probabilities.npz`` when asked).
        save_probabilities: also write the mean probabilities (to ensemble an ensemble further).
        postprocess: optional callable on each label map (e.g. a chosen :class:`ChosenPostprocessing`).
        suffix: label file extension.

    Returns:
        The label files written, in case order.

    Raises:
        DataError: fewer than two inputs, a case missing from a folder, or members that disagree on the
            grid, the number of channels or the region order.
    """
    folders = [Path(p) for p in inputs]
    if len(folders) < 2:
        raise DataError("an ensemble needs at least two --inputs folders")
    per_folder = [_case_files(f) for f in folders]
    cases = sorted(per_folder[0])
    for folder, files in zip(folders[1:], per_folder[1:]):
        missing = sorted(set(cases) ^ set(files))
        if missing:
            raise DataError(f"{folder}: the folders hold different cases (e.g. {missing[0]}); give matching folders")
    output_dir = Path(output_dir)
    written = []
    for case in cases:
        total, affine, order = read_probabilities(per_folder[0][case])
        for files in per_folder[1:]:
            probs, other_affine, other_order = read_probabilities(files[case])
            if probs.shape != total.shape or not np.allclose(other_affine, affine, atol=1e-4) or other_order != order:
                raise DataError(
                    f"{files[case]}: shape {probs.shape}, affine or region order differ from "
                    f"{per_folder[0][case]} (shape {total.shape}); ensemble predictions of the same scans and labels"
                )
            total += probs
            del probs
        total /= len(folders)
        labels = probabilities_to_labels(total, order)
        if postprocess is not None:
            labels = postprocess(labels)
        written.append(write_volume(Volume(labels[None], affine, {}), output_dir / f"{case}{suffix}"))
        if save_probabilities:
            write_probabilities(output_dir / f"{case}{PROBABILITIES_SUFFIX}", total, affine, order)
    log.info("ensembled %d case(s) of %d folders into %s", len(written), len(folders), output_dir)
    return written
