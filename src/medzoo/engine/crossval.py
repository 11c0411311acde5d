"""Cross-validation over the one trainer: k folds into one parent folder, out-of-fold scores, chosen post-processing.

:func:`cross_validate` trains the requested folds of a k-fold split with :func:`medzoo.engine.trainer.train`,
each into ``RUN/fold_k`` (a complete run folder: it predicts, resumes and evaluates alone), sharing one
preprocessed cache (``RUN/cache``). Then every fold's network predicts its own validation cases on their
original grids (``RUN/fold_k/validation/<case>.nii.gz``, class indices), and the out-of-fold Dice of every
case decides the post-processing (:func:`medzoo.inference.postprocess.determine_postprocessing`, saved as
``RUN/postprocessing.json``). ``RUN/crossval.json`` holds per-class Dice, mean and standard deviation over
folds and over cases, without and with that post-processing.

Resuming: a fold whose training finished (``fold_k/train_result.json``) is not trained again; a fold that was
interrupted (``checkpoint_last.pt`` but no result) resumes from its last checkpoint; the others start fresh.
Running the command again therefore only does what is missing, and recomputes the out-of-fold evaluation.

Time budget: ``config.time_budget`` is for the whole command. Each fold gets an equal share of what is left
when it starts (so a fold that ends early hands its time to the next ones), after
:data:`EVALUATION_SHARE` of the budget is set aside for the out-of-fold predictions.

Under ``torchrun``: every rank runs the same loop, so each fold is one distributed (DDP) run over all ranks
and GPUs, folds one after another; only rank 0 predicts the validation cases and writes the results. To put
folds on different GPUs at the same time instead, start one plain process per GPU with a disjoint fold list
into the same parent folder (``CUDA_VISIBLE_DEVICES=0 medzoo train ... --folds 5 --fold 0 2 4 --out RUN`` and
``CUDA_VISIBLE_DEVICES=1 medzoo train ... --folds 5 --fold 1 3 --out RUN``); each trains only its folds, and a
last ``medzoo train ... --folds 5 --fold all --out RUN`` finds them all finished and writes the final
``crossval.json`` over every case.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from medzoo.engine.config import TrainConfig
from medzoo.errors import ConfigError
from medzoo.utils import atomic_write_text, read_json_object

log = logging.getLogger(__name__)

__all__ = ["CROSSVAL_FILE", "EVALUATION_SHARE", "CrossValResult", "cross_validate", "describe_postprocessing",
           "fold_dirs", "fold_progress", "is_crossval_dir", "load_crossval"]

CROSSVAL_FILE = "crossval.json"
RESULT_FILE = "train_result.json"
#: Share of a cross-validation's time budget kept for predicting the out-of-fold cases.
EVALUATION_SHARE = 0.1
#: A fold given less training time than this under a budget is an error, not a useless run.
MIN_FOLD_SECONDS = 5.0


@dataclass
class CrossValResult:
    """What :func:`cross_validate` reports (also written to ``RUN/crossval.json``).

    Attributes:
        run_dir: the parent folder.
        folds: the folds evaluated (trained now or before).
        labels: foreground class index -> name.
        cases: case id -> {"fold", "dice": {class: Dice}, "dice_postprocessed": {...}} (NaN: absent from both).
        postprocessing: the chosen post-processing (``ChosenPostprocessing.to_dict()``).
        seconds: wall-clock time of the command.
    """

    run_dir: Path
    folds: list[int]
    labels: dict[int, str]
    cases: dict[str, dict] = field(default_factory=dict)
    postprocessing: dict = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self, key: str = "dice") -> dict[int, dict[str, float]]:
        """Per class: mean and sd over cases, and of the per-fold means over folds (``key``: dice or
        dice_postprocessed)."""
        out = {}
        for c in self.labels:
            by_case = np.array([v[key][c] for v in self.cases.values()], dtype=np.float64)
            by_fold = np.array([
                _nanmean(np.array([v[key][c] for v in self.cases.values() if v["fold"] == k]))
                for k in self.folds
            ])
            out[c] = {
                "mean_over_cases": _nanmean(by_case), "sd_over_cases": _nansd(by_case),
                "mean_over_folds": _nanmean(by_fold), "sd_over_folds": _nansd(by_fold),
            }
        return out

    def table(self) -> str:
        """Plain-text table of the per-class Dice, without and with the chosen post-processing."""
        raw, post = self.summary("dice"), self.summary("dice_postprocessed")
        head = ["class", "Dice over cases", "over folds", "post-processed: cases", "folds"]
        rows = [head]
        for c, name in self.labels.items():
            rows.append([
                f"{c} {name}", _pm(raw[c], "cases"), _pm(raw[c], "folds"), _pm(post[c], "cases"),
                _pm(post[c], "folds"),
            ])
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
        n = len(self.cases)
        post = describe_postprocessing(self.postprocessing)
        lines.append(f"{n} cases, {len(self.folds)} folds; post-processing: {post}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready dictionary (NaN written as null)."""
        def per_class(d: dict) -> dict:
            return {str(c): _num(v) for c, v in d.items()}

        return {
            "folds": self.folds,
            "labels": {str(c): n for c, n in self.labels.items()},
            "summary": {
                key: {str(c): {k: _num(v) for k, v in s.items()} for c, s in self.summary(key).items()}
                for key in ("dice", "dice_postprocessed")
            },
            "postprocessing": self.postprocessing,
            "cases": {
                cid: {"fold": v["fold"], "dice": per_class(v["dice"]),
                      "dice_postprocessed": per_class(v["dice_postprocessed"])}
                for cid, v in self.cases.items()
            },
            "seconds": round(self.seconds, 1),
        }


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _nansd(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.std(ddof=1)) if finite.size > 1 else float("nan")


def _num(v: float) -> float | None:
    return None if not np.isfinite(v) else round(float(v), 6)


def _pm(stats: dict[str, float], over: str) -> str:
    mean, sd = stats[f"mean_over_{over}"], stats[f"sd_over_{over}"]
    if not np.isfinite(mean):
        return "-"
    return f"{mean:.4f}" + (f" ± {sd:.4f}" if np.isfinite(sd) else "")


def describe_postprocessing(post: dict) -> str:
    """One line for a chosen post-processing (``ChosenPostprocessing.to_dict()``)."""
    steps = []
    if post.get("keep_largest_foreground"):
        steps.append("largest foreground component")
    if post.get("keep_largest_classes"):
        steps.append("largest component of class " + ", ".join(map(str, post["keep_largest_classes"])))
    return "; ".join(steps) or "none (it did not raise the Dice)"


def fold_dirs(run_dir: str | Path) -> list[Path]:
    """The trained fold folders (``fold_k`` with a checkpoint) of a cross-validation parent, in fold order."""
    found = [p for p in Path(run_dir).glob("fold_*") if p.is_dir() and p.name[5:].isdigit()]
    found = [p for p in found if (p / "checkpoint_best.pt").is_file() or (p / "checkpoint_last.pt").is_file()]
    return sorted(found, key=lambda p: int(p.name[5:]))


def is_crossval_dir(path: str | Path) -> bool:
    """Whether ``path`` is a cross-validation parent: no run of its own (``plan.json``), but ``crossval.json``
    or ``fold_k`` folders."""
    path = Path(path)
    if not path.is_dir() or (path / "plan.json").is_file():
        return False
    return (path / CROSSVAL_FILE).is_file() or any(p.name[5:].isdigit() for p in path.glob("fold_*") if p.is_dir())


def fold_progress(run_dir: str | Path) -> dict[int, dict]:
    """Every fold of a cross-validation parent and how far it got, in fold order.

    Returns:
        fold -> ``{"status", ...}``: "trained" with ``train_result.json``'s figures (epochs, steps, seconds,
        best_metric, best_epoch, stop_reason); "interrupted" (a ``checkpoint_last.pt`` the next
        ``medzoo train --fold`` resumes from) with its epoch, step and seconds; "started" (a folder with nothing
        to resume); "not started" (a fold of the k-fold split without a folder).
    """
    from medzoo.engine.checkpoint import load_checkpoint

    run_dir = Path(run_dir)
    found = {int(p.name[5:]): p for p in run_dir.glob("fold_*") if p.is_dir() and p.name[5:].isdigit()}
    k = max((int(read_json_object(p / "config.json").get("folds") or 0) for p in found.values()), default=0)
    progress = {}
    for fold in sorted(set(range(k)) | set(found)):
        fold_dir = found.get(fold)
        if fold_dir is None:
            progress[fold] = {"status": "not started"}
        elif (fold_dir / RESULT_FILE).is_file():
            figures = read_json_object(fold_dir / RESULT_FILE)
            figures.pop("fold", None)
            progress[fold] = {"status": "trained", **figures}
        elif (fold_dir / "checkpoint_last.pt").is_file():
            ckpt = load_checkpoint(fold_dir / "checkpoint_last.pt")
            progress[fold] = {"status": "interrupted", "epochs": ckpt.get("epoch"), "steps": ckpt.get("step"),
                              "seconds": ckpt.get("elapsed")}
        else:
            progress[fold] = {"status": "started"}
    return progress


def load_crossval(run_dir: str | Path) -> CrossValResult | None:
    """The result :func:`cross_validate` wrote to ``RUN/crossval.json`` (None when there is none, or it is not
    readable: the next ``medzoo train --fold all`` writes it again)."""
    data = read_json_object(Path(run_dir) / CROSSVAL_FILE)

    def per_class(d: dict) -> dict[int, float]:
        return {int(c): float("nan") if v is None else float(v) for c, v in d.items()}

    try:
        labels = {int(c): str(n) for c, n in data["labels"].items()}
        result = CrossValResult(Path(run_dir), [int(f) for f in data.get("folds", [])], labels,
                                postprocessing=dict(data.get("postprocessing") or {}),
                                seconds=float(data.get("seconds") or 0.0))
        for cid, case in data["cases"].items():
            result.cases[cid] = {"fold": int(case["fold"]), "dice": per_class(case["dice"]),
                                 "dice_postprocessed": per_class(case["dice_postprocessed"])}
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return result


def _fold_budget(total: float | None, started: float, folds_left: int) -> float | None:
    if total is None:
        return None
    left = total * (1.0 - EVALUATION_SHARE) - (time.monotonic() - started)
    share = left / folds_left
    if share < MIN_FOLD_SECONDS:
        raise ConfigError(
            f"the time budget leaves {share:.0f} s for each of the {folds_left} remaining fold(s); "
            "give a larger --time-budget or fewer folds"
        )
    return share


def _train_fold(config: TrainConfig, fold: int, budget: float | None) -> None:
    from medzoo.engine import distributed
    from medzoo.engine.trainer import train

    parent = Path(config.out)
    fold_dir = parent / f"fold_{fold}"
    fold_config = replace(
        config, out=str(fold_dir), fold=fold, time_budget=budget,
        cache_dir=config.cache_dir or str(parent / "cache"),
    )
    if (fold_dir / RESULT_FILE).is_file():
        log.info("fold %d: already trained (%s)", fold, fold_dir / RESULT_FILE)
        return
    resume = (fold_dir / "checkpoint_last.pt").is_file()
    log.info("fold %d: %s%s", fold, "resuming" if resume else "training",
             "" if budget is None else f" for {budget:.0f} s")
    result = train(fold_config, resume=resume)
    if distributed.env_info().is_main:
        atomic_write_text(fold_dir / RESULT_FILE, json.dumps({
            "fold": fold, "epochs": result.epochs, "steps": result.steps, "best_metric": result.best_metric,
            "best_epoch": result.best_epoch, "seconds": round(result.seconds, 1), "stop_reason": result.stop_reason,
        }, indent=2))


def cross_validate(config: TrainConfig, folds: Sequence[int] | None = None) -> CrossValResult | None:
    """Train the folds of a k-fold split into ``config.out/fold_k`` and score them out of fold.

    Args:
        config: the run's settings; ``config.folds`` is k (>= 2), ``config.out`` the parent folder,
            ``config.time_budget`` the budget of the whole command (see the module text).
        folds: the folds to train (default: all k).

    Returns:
        The :class:`CrossValResult` over every case of the folds that are trained by now (on rank 0; None on
        the other ranks under torchrun).

    Raises:
        ConfigError: fewer than 2 folds, a fold out of range, or a budget too small for the folds.
    """
    from medzoo.engine import distributed

    started = time.monotonic()
    if config.folds < 2:
        raise ConfigError(f"cross-validation needs --folds >= 2, got {config.folds}")
    wanted = list(range(config.folds)) if folds is None else sorted({int(f) for f in folds})
    bad = [f for f in wanted if not 0 <= f < config.folds]
    if bad:
        raise ConfigError(f"fold {bad[0]} is not in 0..{config.folds - 1}")
    total = config.budget_seconds
    parent = Path(config.out)
    todo = [f for f in wanted if not (parent / f"fold_{f}" / RESULT_FILE).is_file()]
    for i, fold in enumerate(todo):
        _train_fold(config, fold, _fold_budget(total, started, len(todo) - i))
    if not distributed.env_info().is_main:
        return None
    result = evaluate_folds(parent)
    result.seconds = time.monotonic() - started
    atomic_write_text(parent / CROSSVAL_FILE, json.dumps(result.to_dict(), indent=2))
    return result


def evaluate_folds(run_dir: str | Path) -> CrossValResult:
    """Out-of-fold predictions of every trained fold's validation cases, their Dice and the chosen post-processing.

    Writes ``fold_k/validation/<case>.nii.gz`` and ``RUN/postprocessing.json``. Region runs are scored per
    region (numbered 1..R in the result's ``labels``) and get no post-processing.
    """
    from medzoo.data.layouts import load_dataset
    from medzoo.data.loading import load_case
    from medzoo.engine.splits import load_splits
    from medzoo.inference.postprocess import (
        POSTPROCESSING_FILE,
        ChosenPostprocessing,
        determine_postprocessing,
    )
    from medzoo.inference.predictor import Predictor
    from medzoo.io.readers import write_volume
    from medzoo.metrics import dice_per_class

    run_dir = Path(run_dir)
    dirs = fold_dirs(run_dir)
    if not dirs:
        raise ConfigError(f"{run_dir}: no trained fold_k folders to evaluate")
    config = TrainConfig.load(dirs[0] / "config.json")
    info = load_dataset(config.data, layout=config.layout, **config.layout_options)
    by_id = {c.case_id: c for c in info.cases}
    k = info.num_classes
    regions = None
    preds, refs, owners = [], [], []
    for fold_dir in dirs:
        fold = int(fold_dir.name[5:])
        val_ids = load_splits(fold_dir / "splits.json")[fold]["val"]
        predictor = Predictor.from_run(fold_dir, device=config.device)
        regions = predictor.plan.regions
        for cid in val_ids:
            image, label = load_case(by_id[cid], info, allow_empty=True)
            pred = predictor.predict_volume(image)
            write_volume(pred, fold_dir / "validation" / f"{cid}.nii.gz")
            preds.append(pred.array[0])
            refs.append(label.array[0])
            owners.append((cid, fold))
    if regions is not None:
        to_class = info.label_mapping or {v: v for v in info.labels}
        lut = np.zeros(max(to_class) + 1, np.int64)
        lut[list(to_class)] = list(to_class.values())
        preds = [lut[p] for p in preds]  # painted label values -> class indices, as the references
        chosen = ChosenPostprocessing()
        labels = dict(enumerate(regions, start=1))
    else:
        chosen = determine_postprocessing(preds, refs, k)
        labels = {c: n for c, n in info.labels.items() if c != 0}
    chosen.save(run_dir / POSTPROCESSING_FILE)
    result = CrossValResult(run_dir, sorted({f for _, f in owners}), labels, postprocessing=chosen.to_dict())
    for (cid, fold), pred, ref in zip(owners, preds, refs):
        if regions is not None:
            raw = post = _region_dice(pred, ref, list(regions.values()))
        else:
            raw = dice_per_class(pred, ref, k, empty_value=np.nan)
            post = dice_per_class(chosen(pred), ref, k, empty_value=np.nan)
        result.cases[cid] = {
            "fold": fold, "dice": {c: float(raw[c]) for c in labels},
            "dice_postprocessed": {c: float(post[c]) for c in labels},
        }
    return result


def _region_dice(pred: np.ndarray, ref: np.ndarray, regions: list[list[int]]) -> dict[int, float]:
    """Dice of each region (1..R) between class-index maps; unannotated reference voxels left out."""
    from medzoo.utils import IGNORE_INDEX

    annotated = ref != IGNORE_INDEX
    out = {}
    for r, values in enumerate(regions, start=1):
        p, g = np.isin(pred, values) & annotated, np.isin(ref, values)
        denom = int(p.sum()) + int(g.sum())
        out[r] = 2.0 * int((p & g).sum()) / denom if denom else float("nan")
    return out
