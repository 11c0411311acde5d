"""nnU-Net v2 steps of :mod:`benchmarks.vs_nnunet`, one per process, with timm and torchvision kept out.

``python -m benchmarks.nnunet_worker preprocess|probe|train ... --result FILE`` (nnU-Net's folders and CPU
settings come in the environment, see :func:`benchmarks.vs_nnunet.nnunet_env`); the result is a JSON file.

* ``preprocess``: ``DatasetFingerprintExtractor``, ``ExperimentPlanner`` and ``DefaultPreprocessor`` (the
  ``3d_fullres`` configuration) of dataset 4, each timed.
* ``probe``: ``nnUNetTrainer``'s training loop for a few short epochs, with every training and validation
  iteration timed, and its start-up, per-epoch bookkeeping and end.
* ``train``: ``nnUNetTrainer.run_training()`` with the given epochs and iterations, then its final validation
  (``perform_actual_validation``), each timed.

The classes are imported by path and instantiated directly: nnU-Net's own lookup
(``recursive_find_python_class``) would import every trainer module, the ``primus`` ones among them, which
import timm and torchvision. :func:`keep_out` makes both unimportable in this process first, so that nothing
loads the CUDA torchvision that pip installs beside the CPU torch.
"""

from __future__ import annotations

import argparse
import importlib.abc
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

BLOCKED = ("timm", "torchvision")
DATASET_ID = 4
CONFIGURATION = "3d_fullres"
PLANS = "nnUNetPlans"


class KeepOut(importlib.abc.MetaPathFinder):
    """A finder that refuses ``BLOCKED`` packages (``ImportError``), ahead of every other finder."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{name} is kept out of the nnU-Net benchmark (benchmarks/nnunet_worker.py)",
                                      name=name)
        return None


def keep_out() -> None:
    """Make timm and torchvision unimportable in this process (idempotent)."""
    if not any(isinstance(f, KeepOut) for f in sys.meta_path):
        sys.meta_path.insert(0, KeepOut())
    loaded = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
    if loaded:
        raise RuntimeError(f"already imported before keep_out(): {loaded[:3]}")


def set_threads(threads: int | None) -> int:
    """Torch threads as ``nnUNetv2_train -device cpu`` sets them (every core) unless ``threads`` is given."""
    import torch

    torch.set_num_threads(threads or os.cpu_count() or 1)
    return torch.get_num_threads()


# ------------------------------------------------------------------------------------------ preprocess
def preprocess(processes: int) -> dict[str, Any]:
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import (
        DatasetFingerprintExtractor,
    )
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    t0 = time.perf_counter()
    DatasetFingerprintExtractor(DATASET_ID, processes).run()
    t1 = time.perf_counter()
    ExperimentPlanner(DATASET_ID).plan_experiment()
    t2 = time.perf_counter()
    DefaultPreprocessor().run(DATASET_ID, CONFIGURATION, PLANS, processes)
    copy_references()
    t3 = time.perf_counter()
    return {"fingerprint_s": t1 - t0, "plan_s": t2 - t1, "preprocess_only_s": t3 - t2, "preprocess_s": t3 - t0}


def copy_references() -> None:
    """The label files in ``gt_segmentations``, where nnU-Net's final validation reads them (as
    ``nnunetv2.experiment_planning.plan_and_preprocess_api.preprocess_dataset`` copies them)."""
    import shutil

    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    name = maybe_convert_to_dataset_name(DATASET_ID)
    target = Path(nnUNet_preprocessed) / name / "gt_segmentations"
    target.mkdir(parents=True, exist_ok=True)
    for label in sorted((Path(nnUNet_raw) / name / "labelsTr").iterdir()):
        shutil.copyfile(label, target / label.name)


# ---------------------------------------------------------------------------------------------- trainer
def make_trainer(epochs: int, iterations: int, val_iterations: int) -> Any:
    """nnU-Net's default trainer on fold 0 of ``3d_fullres``, on the CPU, with the given schedule."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    folder = join(nnUNet_preprocessed, maybe_convert_to_dataset_name(DATASET_ID))
    plans = load_json(join(folder, f"{PLANS}.json"))
    plans["continue_training"] = False  # what nnunetv2.run.run_training.get_trainer_from_args adds
    trainer = nnUNetTrainer(plans, CONFIGURATION, 0, load_json(join(folder, "dataset.json")),
                            device=torch.device("cpu"))
    trainer.num_epochs = epochs
    trainer.num_iterations_per_epoch = iterations
    trainer.num_val_iterations_per_epoch = val_iterations
    return trainer


def plan_of(trainer: Any) -> dict[str, Any]:
    cm = trainer.configuration_manager
    return {"patch": "x".join(map(str, cm.patch_size)), "batch": int(cm.batch_size),
            "spacing": "x".join(f"{s:.2f}" for s in cm.spacing), "output_folder": trainer.output_folder}


def probe(epochs: int, iterations: int, val_iterations: int) -> dict[str, Any]:
    """``run_training``'s loop for a few short epochs (the same calls in the same order), every part timed.

    Returns the mean training and validation iteration after the first of each, the start-up (with the end and
    the first iterations' extra time) and the largest per-epoch bookkeeping (logging, the progress plot, the
    checkpoints), in seconds.
    """
    import torch

    def timed(fn: Any, *args: Any) -> tuple[Any, float]:
        t = time.perf_counter()
        out = fn(*args)
        return out, time.perf_counter() - t

    trainer = make_trainer(epochs, iterations, val_iterations)
    _, start_s = timed(trainer.on_train_start)
    steps, val_steps, overheads = [], [], []
    for _ in range(epochs):
        trainer.on_epoch_start()
        _, overhead = timed(trainer.on_train_epoch_start)
        outputs = []
        for _ in range(iterations):
            out, seconds = timed(lambda: trainer.train_step(next(trainer.dataloader_train)))
            outputs.append(out)
            steps.append(seconds)
        overhead += timed(trainer.on_train_epoch_end, outputs)[1]
        with torch.no_grad():
            overhead += timed(trainer.on_validation_epoch_start)[1]
            val_outputs = []
            for _ in range(val_iterations):
                out, seconds = timed(lambda: trainer.validation_step(next(trainer.dataloader_val)))
                val_outputs.append(out)
                val_steps.append(seconds)
            overhead += timed(trainer.on_validation_epoch_end, val_outputs)[1]
        overheads.append(overhead + timed(trainer.on_epoch_end)[1])
    _, end_s = timed(trainer.on_train_end)
    step_s = statistics.fmean(steps[1:] or steps)
    val_step_s = statistics.fmean(val_steps[1:] or val_steps)
    extra = max(0.0, steps[0] - step_s) + max(0.0, val_steps[0] - val_step_s)
    return {"setup_s": start_s + end_s + extra, "start_s": start_s, "end_s": end_s, "step_s": step_s,
            "val_step_s": val_step_s, "epoch_overhead_s": max(overheads), "steps_s": steps,
            "val_steps_s": val_steps, "epoch_overheads_s": overheads, **plan_of(trainer)}


def train(epochs: int, iterations: int, val_iterations: int) -> dict[str, Any]:
    """``run_training()`` as ``nnUNetv2_train`` runs it, then the final validation (mirroring, as shipped)."""
    trainer = make_trainer(epochs, iterations, val_iterations)
    t0 = time.perf_counter()
    trainer.run_training()
    t1 = time.perf_counter()
    trainer.perform_actual_validation(False)
    t2 = time.perf_counter()
    return {"train_s": t1 - t0, "predict_s": t2 - t1, "epochs_done": int(trainer.current_epoch), **plan_of(trainer)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    keep_out()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.nnunet_worker", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["preprocess", "probe", "train"])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--val-iterations", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    threads = set_threads(args.threads)
    if args.command == "preprocess":
        out = preprocess(args.processes)
    elif args.command == "probe":
        out = probe(args.epochs, args.iterations, args.val_iterations)
    else:
        out = train(args.epochs, args.iterations, args.val_iterations)
    out.update(threads=threads, kept_out=[m for m in sys.modules if m.split(".")[0] in BLOCKED])
    args.result.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
