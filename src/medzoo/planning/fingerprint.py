"""The dataset fingerprint: spacings, shapes, intensity statistics and class frequencies (JSON).

``compute_fingerprint(info)`` reads every labelled case once and returns::

    {
      "dataset": name, "layout": ..., "num_cases": n, "modalities": [...], "labels": {"0": ...},
      "case_ids": [...],
      "spacings": [[si, sj, sk], ...],            # per case, mm
      "shapes": [[I, J, K], ...],                 # per case
      "shapes_after_crop": [[...], ...],          # per case, after cropping to the non-zero region
      "left_right_axes": [a, ...],                # per case, the voxel axis closest to the world's left-right
      "median_spacing": [...], "median_shape": [...], "median_shape_after_crop": [...],
      "anisotropy": max/min of the median spacing,
      "intensity": [                             # per modality, voxels inside the label foreground
        {"modality": "T1", "mean", "std", "median", "min", "max", "percentile_00_5", "percentile_99_5"}
      ],
      "class_frequencies": [...],                # voxel fraction per class over all cases
      "class_presence": [...],                   # fraction of cases containing each class
    }

The ``intensity`` entries use the key names :class:`~medzoo.transforms.intensity.Normalize` reads from
``Plan.norm_stats`` (e.g. for the ``ct`` scheme).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from medzoo.data.case import DatasetInfo
from medzoo.utils import atomic_write_text

log = logging.getLogger(__name__)

#: foreground voxels sampled per case and modality for the intensity statistics (as nnU-Net)
SAMPLES_PER_CASE = 10000


def _stats(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {k: float("nan") for k in ("mean", "std", "median", "min", "max", "percentile_00_5", "percentile_99_5")}
    lo, med, hi = np.percentile(values, [0.5, 50.0, 99.5])
    return {
        "mean": float(values.mean()), "std": float(values.std()), "median": float(med),
        "min": float(values.min()), "max": float(values.max()),
        "percentile_00_5": float(lo), "percentile_99_5": float(hi),
    }


def left_right_axis(affine: np.ndarray) -> int:
    """The voxel axis whose direction is closest to the world's left-right (x) axis (RAS or LPS alike)."""
    return int(np.argmax(np.abs(np.asarray(affine, float)[0, :3])))


def compute_fingerprint(
    info: DatasetInfo, *, skip_bad_cases: bool = False, seed: int = 0, progress: bool = False
) -> dict:
    """Fingerprint of the labelled cases of ``info`` (see the module doc for the keys).

    Args:
        info: the dataset.
        skip_bad_cases: log and skip cases raising :class:`~medzoo.errors.DataError`.
        seed: for the random subset of foreground voxels per case.
        progress: show a tqdm progress bar.

    Raises:
        DataError: a bad case (unless skipped) or no usable case.
    """
    from medzoo.data.loading import iter_good_cases
    from medzoo.errors import DataError
    from medzoo.transforms.spatial import nonzero_bbox

    rng = np.random.default_rng(seed)
    k = info.num_classes
    spacings, shapes, cropped, ids, lateral = [], [], [], [], []
    samples: list[list[np.ndarray]] = [[] for _ in info.modalities]
    counts = np.zeros(k, dtype=np.int64)
    presence = np.zeros(k, dtype=np.int64)
    cases = info.cases
    if progress:
        from tqdm import tqdm

        cases = tqdm(cases, desc="fingerprint", unit="case", leave=False)
    for case, image, label in iter_good_cases(list(cases), info, skip_bad_cases):
        ids.append(case.case_id)
        spacings.append([float(s) for s in image.spacing])
        shapes.append(list(image.spatial_shape))
        cropped.append([b - a for a, b in nonzero_bbox(image.array)])
        lateral.append(left_right_axis(image.affine))
        lab = label.array[0]
        c = np.bincount(lab.reshape(-1), minlength=k)[:k]
        counts += c
        presence += c > 0
        fg = (lab > 0) & (lab < k)  # foreground, not the ignore label's unannotated voxels
        n_fg = int(fg.sum())
        for m in range(image.num_channels):
            vals = image.array[m][fg]
            if n_fg > SAMPLES_PER_CASE:
                vals = vals[rng.choice(n_fg, SAMPLES_PER_CASE, replace=False)]
            samples[m].append(vals.astype(np.float64))
    if not ids:
        raise DataError(f"{info.root}: no usable labelled case to fingerprint")
    intensity = []
    for m, name in enumerate(info.modalities):
        entry = {"modality": name}
        entry.update(_stats(np.concatenate(samples[m]) if samples[m] else np.zeros(0)))
        intensity.append(entry)
    median_spacing = [float(v) for v in np.median(np.asarray(spacings), axis=0)]
    return {
        "dataset": info.name or Path(info.root).name,
        "layout": info.layout,
        "num_cases": len(ids),
        "modalities": list(info.modalities),
        "labels": {str(i): n for i, n in info.labels.items()},
        "case_ids": ids,
        "spacings": spacings,
        "shapes": shapes,
        "shapes_after_crop": cropped,
        "left_right_axes": lateral,
        "median_spacing": median_spacing,
        "median_shape": [float(v) for v in np.median(np.asarray(shapes), axis=0)],
        "median_shape_after_crop": [float(v) for v in np.median(np.asarray(cropped), axis=0)],
        "anisotropy": float(max(median_spacing) / min(median_spacing)),
        "intensity": intensity,
        "class_frequencies": [float(v) for v in counts / max(1, counts.sum())],
        "class_presence": [float(v) for v in presence / len(ids)],
    }


def save_fingerprint(fingerprint: dict, path: str | Path) -> Path:
    """Write the fingerprint as JSON, atomically."""
    return atomic_write_text(Path(path), json.dumps(fingerprint, indent=2))


def load_fingerprint(path: str | Path) -> dict:
    """Read a fingerprint written by :func:`save_fingerprint`."""
    from medzoo.errors import DataError

    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: cannot read the fingerprint ({err})") from err


def norm_stats_from_fingerprint(fingerprint: dict) -> list[dict[str, float]]:
    """Per-channel ``Plan.norm_stats`` (mean, std, percentiles) from a fingerprint."""
    keys = ("mean", "std", "percentile_00_5", "percentile_99_5")
    return [{k: float(entry[k]) for k in keys} for entry in fingerprint["intensity"]]
