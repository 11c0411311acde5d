"""Evaluate a folder of predicted label maps against a folder of reference label maps.

Files are paired by file name (``case_001.nii.gz`` in both folders). Each pair must be on the same grid
(shape and affine within 1e-4), otherwise a :class:`~medzoo.errors.DataError` names the file. Metrics come
from :func:`medzoo.metrics.compute_case_metrics` (spacing from the reference's affine) per case and class,
with the empty-mask rule documented in :mod:`medzoo.metrics`.

Outputs (all written atomically):

- JSON (``out_json``): ``labels`` {value: name}, ``metrics``, ``tolerance_mm``, ``cases`` {file: {label:
  {metric: value}}}, ``summary`` {"per_class": {class name: {metric: {mean, std, median, n, n_infinite}}},
  "mean_foreground": {metric: mean over classes of the class means}}, ``mean_foreground`` (the same),
  ``worst_cases`` (file names, worst first). Infinite
  distances (a class present in only one of the two maps) are written as ``null`` and counted in
  ``n_infinite``; mean/std/median are over the finite values.
- CSV beside it (same stem): one row per case and class.
- Optional HTML report (``report_dir``): see :mod:`medzoo.viz.report`.

Regions (``regions={"WT": [1, 2, 4], ...}``, e.g. BraTS or an nnU-Net v2 region dataset): each region is
scored as the binary map of the label values it unites, in both prediction and reference; the result's
"labels" are then the regions, numbered 1..R in the given order. An ignore label (``ignore_label=V``, or a
label named ``ignore`` in the dataset.json read) marks unannotated reference voxels: they count for nothing
(the prediction there is treated as agreeing).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medzoo.errors import DataError
from medzoo.metrics import ALL_METRICS, compute_case_metrics
from medzoo.utils import atomic_write_text

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_METRICS", "EvaluationResult", "evaluate", "label_names_from_dataset_json", "pair_files",
    "regions_from_dataset_json",
]

DEFAULT_METRICS = ("dice", "iou", "precision", "recall", "hd95", "assd", "nsd")
GEOMETRY_ATOL = 1e-4


@dataclass
class EvaluationResult:
    """What :func:`evaluate` computed and wrote.

    Attributes:
        cases: {file name: {label: {metric: value}}} (infinite distances kept as ``inf``).
        labels: {label value: name} of the scored classes (background excluded).
        metrics: metric names in column order.
        summary: ``{"per_class": {class name: {metric: {"mean", "std", "median", "n", "n_infinite"}}},
            "mean_foreground": {metric: value}}`` (class names are unique; see ``labels`` for their values).
        mean_foreground: {metric: mean over classes of the class means}.
        worst_cases: file names ordered worst first (by mean foreground Dice, or the first metric).
        json_path, csv_path, report_path: written files (None when not asked for).
    """

    cases: dict[str, dict[int, dict[str, float]]]
    labels: dict[int, str]
    metrics: list[str]
    summary: dict[str, dict]
    mean_foreground: dict[str, float]
    worst_cases: list[str]
    tolerance_mm: float = 1.0
    json_path: Path | None = None
    csv_path: Path | None = None
    report_path: Path | None = None
    spacings: dict[str, tuple[float, ...]] = field(default_factory=dict)

    def case_score(self, name: str) -> float:
        """Mean over classes of the case's ranking metric (Dice when computed)."""
        metric = "dice" if "dice" in self.metrics else self.metrics[0]
        values = [self.cases[name][lab][metric] for lab in self.labels]
        finite = [v for v in values if math.isfinite(v)]
        return float(np.mean(finite)) if finite else math.inf

    def table(self) -> str:
        """A plain-text summary table: one row per class, ``mean ± std`` per metric (+ the foreground mean)."""
        head = ["label"] + self.metrics
        rows = []
        for lab, name in self.labels.items():
            cells = [f"{lab} {name}"]
            for m in self.metrics:
                s = self.summary["per_class"][name][m]
                cell = "n/a" if s["n"] == 0 else f"{s['mean']:.4f} ± {s['std']:.4f}"
                if s["n_infinite"]:
                    cell += f" ({s['n_infinite']} inf)"
                cells.append(cell)
            rows.append(cells)
        rows.append(["mean foreground"] + [_fmt(self.mean_foreground[m]) for m in self.metrics])
        widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [head] + rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return f"{len(self.cases)} case(s)\n" + "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-able dict (non-finite values -> None)."""
        return {
            "labels": {str(k): v for k, v in self.labels.items()},
            "metrics": list(self.metrics),
            "tolerance_mm": self.tolerance_mm,
            "cases": {
                name: {str(lab): {m: _json_num(v) for m, v in vals.items()} for lab, vals in per.items()}
                for name, per in self.cases.items()
            },
            "summary": {
                "per_class": {
                    name: {m: {k: _json_num(v) for k, v in s.items()} for m, s in per.items()}
                    for name, per in self.summary["per_class"].items()
                },
                "mean_foreground": {m: _json_num(v) for m, v in self.mean_foreground.items()},
            },
            "mean_foreground": {m: _json_num(v) for m, v in self.mean_foreground.items()},
            "worst_cases": list(self.worst_cases),
        }


def _fmt(v: float) -> str:
    return "n/a" if not math.isfinite(v) else f"{v:.4f}"


def _json_num(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


# --------------------------------------------------------------------------------------------------- files
def _volume_files(folder: Path) -> dict[str, Path]:
    from medzoo.io.readers import is_volume_file

    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    return {
        p.name: p for p in sorted(folder.iterdir())
        if p.is_file() and is_volume_file(p) and not p.name.startswith(".") and not p.name.endswith(".img")
    }  # fmt: skip


def pair_files(pred_dir: str | Path, ref_dir: str | Path) -> list[tuple[str, Path, Path]]:
    """Pair prediction and reference files by file name.

    Returns:
        ``[(name, pred_path, ref_path)]`` sorted by name.

    Raises:
        DataError: a folder has no volume files, or some names have no partner (all are listed).
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    preds, refs = _volume_files(pred_dir), _volume_files(ref_dir)
    if not refs:
        raise DataError(f"{ref_dir}: no reference label files (.nii.gz, .nii, .nrrd, .mha, ...)")
    if not preds:
        raise DataError(f"{pred_dir}: no prediction files (.nii.gz, .nii, .nrrd, .mha, ...)")
    only_pred = sorted(set(preds) - set(refs))
    only_ref = sorted(set(refs) - set(preds))
    if only_pred or only_ref:
        parts = []
        if only_ref:
            parts.append(f"no prediction for {len(only_ref)} reference file(s): {_short_list(only_ref)}")
        if only_pred:
            parts.append(f"no reference for {len(only_pred)} prediction file(s): {_short_list(only_pred)}")
        raise DataError(
            f"cannot pair {pred_dir} with {ref_dir}: " + "; ".join(parts)
            + " (files are paired by identical names)"
        )
    return [(name, preds[name], refs[name]) for name in sorted(refs)]


def _short_list(names: Sequence[str], limit: int = 10) -> str:
    text = ", ".join(names[:limit])
    return text + (f", ... (+{len(names) - limit} more)" if len(names) > limit else "")


def label_names_from_dataset_json(path: str | Path) -> dict[int, str]:
    """Class names from an MSD (``{"0": "background", "1": "csf"}``) or nnU-Net v2 (``{"background": 0}``)
    ``dataset.json``. Region entries (lists of values) are skipped.

    Raises:
        DataError: unreadable file or no ``labels`` entry.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read dataset.json ({err})") from err
    labels = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise DataError(f"{path}: no 'labels' mapping in dataset.json")
    names: dict[int, str] = {}
    for key, value in labels.items():
        if str(key) == "ignore":  # nnU-Net v2's unannotated voxels: not a class
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not str(key).lstrip("-").isdigit():
            names[int(value)] = str(key)  # nnU-Net v2: name -> value
        elif str(key).lstrip("-").isdigit():
            names[int(key)] = str(value)  # MSD: value -> name
    if not names:
        raise DataError(f"{path}: could not read integer labels from {labels}")
    return dict(sorted(names.items()))


def regions_from_dataset_json(path: str | Path) -> tuple[dict[str, list[int]], int | None]:
    """The regions (name -> label values; every non-background entry of a region-based nnU-Net v2
    ``labels``) and the ignore label (or None) of a ``dataset.json``.

    Raises:
        DataError: unreadable file, or no region (list-valued) entry.
    """
    path = Path(path)
    try:
        labels = json.loads(path.read_text(encoding="utf-8")).get("labels", {})
    except (OSError, ValueError, AttributeError) as err:
        raise DataError(f"{path}: cannot read dataset.json ({err})") from err
    ignore = labels.get("ignore") if isinstance(labels, dict) else None
    if not isinstance(labels, dict) or not any(isinstance(v, list) for v in labels.values()):
        raise DataError(f"{path}: declares no regions (labels mapping a name to a list of values); pass --regions NAME=V,V")
    regions = {}
    for name, value in labels.items():
        values = [int(v) for v in value] if isinstance(value, list) else [int(value)]
        if name != "ignore" and values != [0]:
            regions[str(name)] = values
    return regions, None if ignore is None else int(ignore)


# --------------------------------------------------------------------------------------------------- cases
def _sibling_dataset_json(ref_dir: str | Path) -> Path | None:
    """``ref_dir/../dataset.json`` when there is one, else None."""
    candidate = Path(ref_dir).resolve().parent / "dataset.json"
    return candidate if candidate.is_file() else None


def _as_labels(array: np.ndarray, name: str, which: str) -> np.ndarray:
    arr = np.asarray(array)
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise DataError(f"{name}: {which} has {arr.shape[0]} channels; a label map has one")
        arr = arr[0]
    elif arr.ndim == 3 and arr.shape[0] == 1:  # (1, I, J): a 2D label map
        arr = arr[0]
    if np.issubdtype(arr.dtype, np.floating):
        rounded = np.rint(arr)
        if not np.allclose(arr, rounded, atol=1e-3):
            raise DataError(f"{name}: {which} has non-integer values; expected a label map")
        arr = rounded.astype(np.int32)
    return arr


def _evaluate_case(
    name: str, pred_path: Path, ref_path: Path, labels: Sequence[int] | None, metrics: Sequence[str],
    tolerance_mm: float, regions: Sequence[Sequence[int]] | None = None, ignore_label: int | None = None,
) -> tuple[dict[int, dict[str, float]], tuple[float, ...]]:
    from medzoo.io.readers import read_volume

    pred, ref = read_volume(pred_path), read_volume(ref_path)
    if pred.spatial_shape != ref.spatial_shape:
        raise DataError(
            f"{name}: prediction shape {pred.spatial_shape} differs from reference shape {ref.spatial_shape}; "
            "predictions must be on the reference's grid"
        )
    diff = float(np.abs(pred.affine - ref.affine).max())
    if diff > GEOMETRY_ATOL:
        raise DataError(
            f"{name}: prediction affine differs from the reference's (max abs difference {diff:.3g} > "
            f"{GEOMETRY_ATOL}); predictions must be written with the reference's affine"
        )
    p, r = _as_labels(pred.array, name, "prediction"), _as_labels(ref.array, name, "reference")
    spacing = tuple(float(s) for s in ref.spacing[: r.ndim])
    if ignore_label is not None:
        unannotated = r == ignore_label
        p, r = np.where(unannotated, 0, p), np.where(unannotated, 0, r)
    if regions is not None:
        out = {}
        for i, values in enumerate(regions, start=1):
            pr, rr = np.isin(p, values).astype(np.uint8), np.isin(r, values).astype(np.uint8)
            out[i] = compute_case_metrics(pr, rr, [1], spacing, metrics=metrics, tolerance_mm=tolerance_mm)[1]
        return out, spacing
    if labels is None:
        present = np.union1d(np.unique(p), np.unique(r))
        case_labels = [int(v) for v in present if v > 0]
    else:
        case_labels = list(labels)
    return compute_case_metrics(p, r, case_labels, spacing, metrics=metrics, tolerance_mm=tolerance_mm), spacing


def _summary(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    n_inf = int(arr.size - finite.size)
    if finite.size == 0:
        return {"mean": math.nan, "std": math.nan, "median": math.nan, "n": 0, "n_infinite": n_inf}
    return {
        "mean": float(finite.mean()), "std": float(finite.std()), "median": float(np.median(finite)),
        "n": int(finite.size), "n_infinite": n_inf,
    }  # fmt: skip


def _write_csv(result: EvaluationResult, path: Path) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case", "label", "name", *result.metrics])
    for case, per in result.cases.items():
        for lab, name in result.labels.items():
            vals = per[lab]
            writer.writerow([case, lab, name, *(_csv_num(vals[m]) for m in result.metrics)])
    return atomic_write_text(path, buf.getvalue())


def _csv_num(v: float) -> str:
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return "" if math.isnan(v) else repr(float(v))


# --------------------------------------------------------------------------------------------------- main
def evaluate(
    pred_dir: str | Path,
    ref_dir: str | Path,
    out_json: str | Path | None = None,
    labels: Iterable[int] | Mapping[int, str] | None = None,
    metrics: Sequence[str] | None = None,
    report_dir: str | Path | None = None,
    *,
    images_dir: str | Path | None = None,
    dataset_json: str | Path | None = None,
    tolerance_mm: float = 1.0,
    workers: int | None = None,
    max_overlays: int = 24,
    regions: Mapping[str, Sequence[int]] | None = None,
    ignore_label: int | None = None,
) -> EvaluationResult:
    """Score every prediction in ``pred_dir`` against the same-named reference in ``ref_dir``.

    Args:
        pred_dir, ref_dir: folders of label maps (any format :func:`medzoo.io.readers.read_volume` reads).
        out_json: where to write the JSON (the CSV goes beside it with suffix ``.csv``); None writes nothing.
        labels: label values to score (or {value: name}); default: every non-zero value found in any
            reference or prediction (names from ``dataset_json`` when given).
        metrics: names from :data:`medzoo.metrics.ALL_METRICS`; default :data:`DEFAULT_METRICS`.
        report_dir: also write an offline HTML report there (:func:`medzoo.viz.report.write_report`).
        images_dir: images for the report's overlays, matched by name (``case.nii.gz`` or the nnU-Net
            ``case_0000.nii.gz``); without it overlays are drawn on the label alone.
        dataset_json: a ``dataset.json`` to name (and, without ``labels``, select) the classes. Default: the
            ``dataset.json`` beside ``ref_dir`` (MSD / nnU-Net layout: ``labelsTr/../dataset.json``) when
            there is one with a readable ``labels`` entry and ``labels`` is not given.
        tolerance_mm: tolerance of the normalised surface Dice.
        workers: threads over cases (default min(4, CPUs)).
        max_overlays: overlay pictures in the report (worst cases first).
        regions: score these regions (name -> label values) instead of the labels (see the module text).
        ignore_label: reference value of unannotated voxels (default: a label named ``ignore`` in the
            dataset.json read, else none).

    Returns:
        :class:`EvaluationResult`.

    Raises:
        DataError: unpaired files, grids that differ, non-label content, unknown metric.
    """
    metrics = list(metrics) if metrics else list(DEFAULT_METRICS)
    unknown = [m for m in metrics if m not in ALL_METRICS]
    if unknown:
        raise DataError(f"unknown metric(s) {unknown}; available: {', '.join(ALL_METRICS)}")
    names_from_json = label_names_from_dataset_json(dataset_json) if dataset_json else {}
    beside = _sibling_dataset_json(ref_dir) if dataset_json is None and labels is None else None
    if beside is not None:
        try:
            names_from_json = label_names_from_dataset_json(beside)
            log.info("class names from %s", beside)
        except DataError as err:  # a dataset.json we were not asked to read: ignore it if it is unusable
            log.info("not naming classes from %s: %s", beside, err)
    json_used = dataset_json or beside
    if ignore_label is None and json_used:
        try:
            raw = json.loads(Path(json_used).read_text(encoding="utf-8")).get("labels", {})
            ignore_label = int(raw["ignore"]) if isinstance(raw, dict) and "ignore" in raw else None
        except (OSError, ValueError, TypeError, AttributeError):
            ignore_label = None
    region_values = None
    if regions is not None:
        if not regions:
            raise DataError("no regions to evaluate")
        labels = {i: str(n) for i, n in enumerate(regions, start=1)}
        region_values = [[int(v) for v in vs] for vs in regions.values()]
    if labels is None and names_from_json:
        labels = {k: v for k, v in names_from_json.items() if k != 0}
    label_list: list[int] | None = None
    given_names: dict[int, str] = {}
    if labels is not None:
        if isinstance(labels, Mapping):
            given_names = {int(k): str(v) for k, v in labels.items()}
            label_list = list(given_names)
        else:
            label_list = [int(v) for v in labels]
        if not label_list:
            raise DataError("no labels to evaluate")

    pairs = pair_files(pred_dir, ref_dir)
    n_workers = workers or min(4, os.cpu_count() or 1)

    def job(item: tuple[str, Path, Path]):
        return _evaluate_case(item[0], item[1], item[2], label_list, metrics, tolerance_mm, region_values,
                              ignore_label)  # fmt: skip

    if n_workers > 1 and len(pairs) > 1:
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            outputs = list(pool.map(job, pairs))
    else:
        outputs = [job(p) for p in pairs]

    per_case = {name: out[0] for (name, _, _), out in zip(pairs, outputs)}
    spacings = {name: out[1] for (name, _, _), out in zip(pairs, outputs)}
    if label_list is None:
        label_list = sorted({lab for per in per_case.values() for lab in per})
        if not label_list:
            raise DataError(f"{ref_dir}: all references and predictions are empty (only label 0); nothing to score")
        # a class absent from both maps of a case scores by the empty rule
        empty = compute_case_metrics(np.zeros((1, 1), np.uint8), np.zeros((1, 1), np.uint8), label_list, None,
                                     metrics=metrics, tolerance_mm=tolerance_mm)
        for per in per_case.values():
            for lab in label_list:
                per.setdefault(lab, dict(empty[lab]))
    names: dict[int, str] = {}
    for lab in label_list:
        name = given_names.get(lab) or names_from_json.get(lab) or f"label_{lab}"
        names[lab] = name if name not in names.values() else f"{name}_{lab}"  # keep names unique
    for per in per_case.values():  # stable class order
        ordered = {lab: per[lab] for lab in label_list}
        per.clear()
        per.update(ordered)

    per_class = {
        names[lab]: {m: _summary([per_case[c][lab][m] for c in per_case]) for m in metrics} for lab in label_list
    }
    mean_fg = {}
    for m in metrics:
        means = [stats[m]["mean"] for stats in per_class.values() if stats[m]["n"] > 0]
        mean_fg[m] = float(np.mean(means)) if means else math.nan
    summary = {"per_class": per_class, "mean_foreground": mean_fg}
    result = EvaluationResult(
        cases=per_case, labels=names, metrics=metrics, summary=summary, mean_foreground=mean_fg,
        worst_cases=[], tolerance_mm=float(tolerance_mm), spacings=spacings,
    )  # fmt: skip
    higher_is_better = ("dice" in metrics) or metrics[0] not in ("hd95", "hd", "assd", "vol_pred", "vol_ref")
    result.worst_cases = sorted(
        per_case, key=lambda c: (result.case_score(c) if higher_is_better else -result.case_score(c), c)
    )

    if out_json is not None:
        out_json = Path(out_json)
        result.json_path = atomic_write_text(out_json, json.dumps(result.to_dict(), indent=2) + "\n")
        result.csv_path = _write_csv(result, _csv_path(out_json))
        log.info("wrote %s and %s", result.json_path, result.csv_path)
    if report_dir is not None:
        from medzoo.viz.report import write_report

        result.report_path = write_report(
            result, report_dir, pred_dir=pred_dir, ref_dir=ref_dir, images_dir=images_dir, max_overlays=max_overlays
        )
    return result


def _csv_path(json_path: Path) -> Path:
    name = json_path.name
    stem = name[: -len(".json")] if name.lower().endswith(".json") else name
    return json_path.with_name(stem + ".csv")
