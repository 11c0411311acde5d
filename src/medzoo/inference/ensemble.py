"""Saved probabilities and their ensembles: ``<case>_probabilities.npz`` files in, label maps out.

``medzoo predict --save-probabilities`` writes, next to each label map, ``<case>_probabilities.npz`` with
``probabilities`` (float16 (K, *S) on the scan's own grid) and ``affine`` (4x4); a region-based run adds
``regions_class_order`` (the label value each sigmoid channel paints, in painting order). An ensemble of
several folders is the mean of their probabilities, accumulated one folder at a time so memory stays that
of one case's probabilities plus one running sum, whatever the number of members.

:class:`EnsemblePredictor` does the same live, inside ``medzoo predict``: ``--model RUN`` with a
cross-validation parent folder (``RUN/fold_k``) averages its folds, and ``--model RUN_A RUN_B`` averages
several runs with the same labels. Members trained with the same plan (the folds of one cross-validation)
are averaged on the preprocessed grid, before the one resampling back to the scan's grid, as nnU-Net does;
members with different plans (e.g. a 2D and a 3D run) each map their probabilities back to the scan's grid,
where they are averaged. A cross-validation's chosen post-processing (``RUN/postprocessing.json``) is applied
to the ensemble's labels.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medzoo.errors import ConfigError, DataError
from medzoo.io.readers import write_volume
from medzoo.io.volume import Volume
from medzoo.utils import atomic_write

if TYPE_CHECKING:
    from medzoo.inference.predictor import PredictOptions, Predictor

log = logging.getLogger(__name__)

__all__ = [
    "PROBABILITIES_SUFFIX",
    "EnsemblePredictor",
    "load_models",
    "model_members",
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


def model_members(models: str | Path | Sequence[str | Path]) -> list[Path]:
    """The run folders (or exports) a ``--model`` value names: a cross-validation parent gives its folds.

    Raises:
        ConfigError: a folder that is neither a run (``plan.json``) nor a parent of trained ``fold_k`` folders.
    """
    from medzoo.engine.crossval import fold_dirs

    given = [Path(models)] if isinstance(models, (str, Path)) else [Path(m) for m in models]
    members: list[Path] = []
    for path in given:
        if path.is_dir() and not (path / "plan.json").is_file():
            folds = fold_dirs(path)
            if not folds:
                raise ConfigError(f"{path}: neither a run folder (plan.json) nor a cross-validation (fold_k folders)")
            members.extend(folds)
        else:
            members.append(path)
    return members


def _same_preprocessing(plans: Sequence) -> bool:
    """Whether every plan preprocesses a scan identically (then their outputs share one grid)."""
    keys = ("target_spacing", "crop_to_nonzero", "normalization", "norm_stats", "modalities", "num_classes")
    first = plans[0].to_dict()
    return all(all(p.to_dict().get(k) == first.get(k) for k in keys) for p in plans[1:])


class EnsemblePredictor:
    """Several predictors as one: the mean of their probabilities, accumulated member by member.

    Args:
        members: :class:`~medzoo.inference.predictor.Predictor` objects with the same classes.
        postprocess: optional callable on the ensemble's label map (*S) (e.g. a chosen post-processing).

    ``predict_case(image, probabilities)`` has the :meth:`Predictor.predict_case` contract, so the prediction
    pipeline runs an ensemble as it runs one model.
    """

    def __init__(self, members: Sequence[Predictor], postprocess: Callable[[np.ndarray], np.ndarray] | None = None):
        if not members:
            raise ConfigError("an ensemble needs at least one model")
        outputs = {(m.plan.num_classes, str(m.plan.regions), str(m.plan.regions_class_order)) for m in members}
        if len(outputs) > 1:
            raise ConfigError("the ensemble's models predict different classes or regions; ensemble runs of one dataset")
        self.members = list(members)
        self.plan = self.members[0].plan
        self.postprocess = postprocess
        self.shared_grid = _same_preprocessing([m.plan for m in self.members])

    def predict_case(self, image: Volume, probabilities: bool = False) -> tuple[Volume, Volume | None]:
        """Labels (1, *S) and, when asked, mean probabilities (K, *S) of the members on ``image``'s grid."""
        if self.shared_grid:
            first = self.members[0]
            pre = first.preprocess(image)
            total = None
            for member in self.members:
                _, probs = member.predict_preprocessed(pre.image, probabilities=True)
                total = probs.float() if total is None else total.add_(probs.float())
                del probs
            mean = total.div_(len(self.members))
            labels, probs = first.restore(image, pre, labels=first.labels_from_probabilities(mean), probabilities=mean,
                                          keep_probabilities=probabilities)  # fmt: skip
        else:
            total = None
            for member in self.members:
                _, probs = member.predict_case(image, probabilities=True)
                arr = probs.array.astype(np.float32)
                total = arr if total is None else np.add(total, arr, out=total)
                del probs, arr
            mean = total / len(self.members)
            labels = Volume(probabilities_to_labels(mean, self.plan.regions_class_order if self.plan.regions else None)[None],
                            image.affine.copy(), {})  # fmt: skip
            meta = {"regions_class_order": list(self.plan.regions_class_order)} if self.plan.regions else {}
            probs = Volume(mean.astype(np.float16), image.affine.copy(), meta) if probabilities else None
        if self.postprocess is not None:
            labels = Volume(self.postprocess(labels.array[0])[None], labels.affine, labels.meta)
        return labels, probs


def load_models(models: str | Path | Sequence[str | Path], options: PredictOptions) -> Predictor | EnsemblePredictor:
    """The predictor ``medzoo predict --model`` asks for: one run, a cross-validation's folds, or several runs.

    A single cross-validation parent's ``postprocessing.json`` is applied unless
    ``options.chosen_postprocessing`` is False.
    """
    from medzoo.inference.postprocess import POSTPROCESSING_FILE, ChosenPostprocessing
    from medzoo.inference.predictor import load_predictor

    given = [Path(models)] if isinstance(models, (str, Path)) else [Path(m) for m in models]
    members = model_members(given)
    chosen = None
    if len(given) == 1 and options.chosen_postprocessing and (given[0] / POSTPROCESSING_FILE).is_file():
        chosen = ChosenPostprocessing.load(given[0] / POSTPROCESSING_FILE)
        log.info("post-processing chosen by cross-validation: %s", chosen.to_dict())
    if len(members) == 1:
        predictor = load_predictor(members[0], options)
        if chosen is not None and chosen.active:
            predictor.postprocess = _chain(predictor.postprocess, chosen)
        return predictor
    predictors = []
    for member in members:
        predictor = load_predictor(member, options)
        predictor.postprocess = None  # the ensemble post-processes its own labels once
        predictors.append(predictor)
    post = _chain(options.postprocess(), chosen if chosen is not None and chosen.active else None)
    log.info("ensemble of %d models: %s", len(members), ", ".join(str(m) for m in members))
    return EnsemblePredictor(predictors, postprocess=post)


def _chain(*steps: Callable[[np.ndarray], np.ndarray] | None) -> Callable[[np.ndarray], np.ndarray] | None:
    active = [s for s in steps if s is not None]
    if not active:
        return None
    if len(active) == 1:
        return active[0]

    def run(labels: np.ndarray) -> np.ndarray:
        for step in active:
            labels = step(labels)
        return labels

    return run
