"""medzoo against nnU-Net v2 on hippocampus: the same CPU, the same wall-clock budget, the same fold-0 cases.

For each budget (``--budgets 5m,10m``), interleaved (medzoo 5m, nnU-Net 5m, medzoo 10m, ...):

* **medzoo**: ``medzoo.train(TrainConfig(time_budget=..., folds=5, fold=0))`` with the defaults, in this
  process; its budget covers what ``medzoo train --time-budget`` covers (planning, a cache check, training, the
  final validation). Its plan fits the budget (``plan_for_budget``, the default), so before each run its cache
  is filled for that plan, timed as its preprocessing and not counted in the budget (the budgets share one
  cache folder: a case already preprocessed the same way is reused).
* **nnU-Net v2**: its default ``nnUNetTrainer`` on the ``3d_fullres`` configuration, on the CPU, in a
  subprocess (:mod:`benchmarks.nnunet_worker`). Its epochs are cut so that its poly learning-rate schedule ends
  inside the budget: a probe run measures its seconds per training and validation iteration, its start-up and
  its per-epoch bookkeeping once; then each budget keeps nnU-Net's own epochs of 250 iterations (50 validation
  iterations) when at least :data:`MIN_EPOCHS` of them fit, and otherwise runs :data:`MIN_EPOCHS` epochs with
  the iterations per epoch cut to fill the budget (validation iterations a fifth of them, nnU-Net's ratio),
  see :func:`nnunet_schedule`. The budget is for ``run_training()`` (start-up, epochs with their validation
  iterations, checkpoints); its final validation (``perform_actual_validation``) is timed as prediction.

Before the budgets (timed and reported, not counted in any budget): nnU-Net's fingerprint, plan and
preprocessing of ``3d_fullres`` on ``--processes`` processes (default 2), from a raw
folder ``Dataset004_Hippocampus`` of links to the MSD files; and nnU-Net's probe.

Same validation cases: medzoo's fold 0 of ``make_splits(cases, folds=5, seed=0)`` (what ``medzoo train
--folds 5 --fold 0`` trains on) is written as nnU-Net's ``splits_final.json``, so both train on the same 80 %
and are scored on the same 20 %. Scoring: each tool predicts those cases on their original grids with
mirroring test-time augmentation (medzoo: ``medzoo.predict(..., tta=True)`` with the best checkpoint, what
``medzoo predict`` uses; nnU-Net: its own final validation, final weights, mirroring on, as
``nnUNetv2_train`` does), and medzoo's ``dice_per_class`` scores both sets of files against the same label
files: Dice per class and the mean over the foreground classes.

nnU-Net without timm and torchvision: nnU-Net's trainer lookup (``recursive_find_python_class``) imports
every module under ``nnunetv2.training.nnUNetTrainer``, among them the ``primus`` trainers, which import timm,
which imports torchvision; the torchvision pip installs beside the CPU torch is a CUDA build that fails to
import. The worker therefore never searches: it instantiates ``nnUNetTrainer``, ``DatasetFingerprintExtractor``,
``ExperimentPlanner`` and ``DefaultPreprocessor`` by their import paths, and before importing nnunetv2 it puts
a finder at the front of ``sys.meta_path`` that refuses ``timm`` and ``torchvision`` (an ``ImportError``, which
code with an optional import handles), so neither is ever loaded. Nothing in site-packages is changed.

nnU-Net on 2 cores: ``nnUNet_n_proc_DA`` (its augmentation processes) is half the cores, at least 1
(``--nnunet-da-procs``); ``nnUNet_def_n_proc`` (its export pool) the core count; ``nnUNet_compile=false``;
torch threads as ``nnUNetv2_train -device cpu`` sets them (all cores) unless ``--threads`` is given.

Needs ``nnunetv2`` (the ``bench`` extra) and Task04_Hippocampus (``$MEDZOO_HIPPOCAMPUS_DIR`` or
``../shared/data/Task04_Hippocampus``); without either it reports a skip. Long: one timed run at a time on a
quiet machine (``--budgets 5m,10m`` takes about 45 minutes, see docs/benchmarks.md).

Run: ``python -m benchmarks.vs_nnunet`` (``--budgets 5m,10m,30m``; ``--tools medzoo`` for one side;
``--quick``: a 30 s budget on 10 cases, to check the wiring; ``--runs-dir DIR`` keeps the runs there).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from benchmarks.common import (
    apply_threads,
    environment,
    format_table,
    make_parser,
    markdown_table,
    write_results,
)
from benchmarks.time_to_dice import hippocampus_dir

NAME = "vs_nnunet"
REPO = Path(__file__).resolve().parent.parent
TOOLS = ("medzoo", "nnunet")
FOLDS, FOLD, SEED = 5, 0, 0
DATASET_ID = 4
DATASET_NAME = f"Dataset{DATASET_ID:03d}_Hippocampus"
CONFIGURATION = "3d_fullres"
#: nnU-Net's defaults: 1000 epochs of 250 training and 50 validation iterations.
NNUNET_EPOCHS, NNUNET_ITERATIONS, NNUNET_VAL_ITERATIONS = 1000, 250, 50
#: Fewest epochs a cut schedule gets (the poly schedule steps once per epoch).
MIN_EPOCHS = 10
#: Share of the budget the nnU-Net schedule is sized for (the probe's timings are estimates).
BUDGET_SHARE = 0.95
#: The probe: epochs of training and validation iterations, timed before the budgets.
PROBE_EPOCHS, PROBE_ITERATIONS, PROBE_VAL_ITERATIONS = 2, 6, 3
QUICK_CASES, QUICK_BUDGET = 10, "30s"


# ------------------------------------------------------------------------------------------------ data
def subset_dataset(data: Path, work: Path, cases: int | None) -> Path:
    """``data`` itself, or with ``cases`` < all an MSD folder whose ``dataset.json`` lists the first ``cases``
    training cases (absolute paths to the original files)."""
    meta = json.loads((data / "dataset.json").read_text())
    if cases is None or cases >= len(meta["training"]):
        return data
    subset = work / f"data_{cases}_cases"
    subset.mkdir(parents=True, exist_ok=True)
    entries = [{k: str((data / v).resolve()) for k, v in e.items()} for e in meta["training"][:cases]]
    meta.update(training=entries, numTraining=len(entries), test=[])
    (subset / "dataset.json").write_text(json.dumps(meta, indent=1))
    return subset


def fold_splits(data: Path) -> list[dict[str, list[str]]]:
    """The folds ``medzoo train --folds 5`` makes of ``data`` (the same call, the same seed)."""
    from medzoo.data.layouts import load_dataset
    from medzoo.engine.splits import make_splits

    return make_splits([c.case_id for c in load_dataset(str(data)).cases], folds=FOLDS, seed=SEED)


def write_nnunet_raw(data: Path, raw_root: Path) -> Path:
    """nnU-Net v2's raw folder of ``data`` (single-channel): links ``imagesTr/<case>_0000.nii.gz`` and
    ``labelsTr/<case>.nii.gz`` to the original files, and a ``dataset.json``; returns the dataset folder."""
    from medzoo.data.layouts import load_dataset

    info = load_dataset(str(data))
    if len(info.modalities) != 1:
        raise ValueError(f"{data}: {len(info.modalities)} channels; this benchmark converts one-channel data")
    folder = raw_root / DATASET_NAME
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for case in info.cases:
        for link, target in ((folder / "imagesTr" / f"{case.case_id}_0000.nii.gz", case.image_paths[0]),
                             (folder / "labelsTr" / f"{case.case_id}.nii.gz", case.label_path)):
            link.unlink(missing_ok=True)
            link.symlink_to(Path(target).resolve())
    raw_value = {index: raw for raw, index in (info.label_mapping or {}).items()}
    labels = {("background" if i == 0 else name): raw_value.get(i, i) for i, name in sorted(info.labels.items())}
    meta = {"name": DATASET_NAME, "channel_names": {"0": info.modalities[0]}, "labels": labels,
            "numTraining": len(info.cases), "file_ending": ".nii.gz"}
    (folder / "dataset.json").write_text(json.dumps(meta, indent=1))
    return folder


def nnunet_splits(folds: list[dict[str, list[str]]]) -> list[dict[str, list[str]]]:
    """nnU-Net's ``splits_final.json`` content for medzoo's folds (the same train/val ids per fold)."""
    return [{"train": list(f["train"]), "val": list(f["val"])} for f in folds]


def score_folder(pred_dir: Path, data: Path, case_ids: list[str]) -> dict[str, Any]:
    """Dice per foreground class (mean over the cases) and its mean over classes, of ``pred_dir/<case>.nii.gz``
    against the dataset's labels, on the original grids, by medzoo's ``dice_per_class``."""
    import numpy as np

    from medzoo.data.layouts import load_dataset
    from medzoo.data.loading import load_case
    from medzoo.io.readers import read_volume
    from medzoo.metrics import dice_per_class

    info = load_dataset(str(data))
    by_id = {c.case_id: c for c in info.cases}
    k = len(info.labels)
    lut = np.arange(256)
    for raw, index in (info.label_mapping or {}).items():
        lut[raw] = index
    scores = []
    for cid in case_ids:
        _, label = load_case(by_id[cid], info)
        pred = read_volume(pred_dir / f"{cid}.nii.gz")
        if pred.array.shape[1:] != label.array.shape[1:]:
            raise ValueError(f"{pred_dir}/{cid}.nii.gz: grid {pred.array.shape[1:]} is not the label's "
                             f"{label.array.shape[1:]}")
        scores.append(dice_per_class(lut[np.asarray(pred.array[0], dtype=np.int64)], label.array[0], k)[1:])
    per_class = np.mean(scores, axis=0)
    names = [info.labels[i] for i in range(1, k)]
    return {"cases": len(scores), "dice_mean": float(per_class.mean()),
            **{f"dice_{n}": float(v) for n, v in zip(names, per_class)}}


# ----------------------------------------------------------------------------------------------- medzoo
def medzoo_config(data: Path, out: Path, cache: Path, budget: str | None) -> Any:
    from medzoo.engine.config import TrainConfig

    return TrainConfig(data=str(data), out=str(out), time_budget=budget, folds=FOLDS, fold=FOLD, seed=SEED,
                       device="cpu", cache_dir=str(cache), progress=False)


def medzoo_preprocess(data: Path, cache: Path, case_ids: list[str], budget: str) -> float:
    """Plan as ``medzoo train`` plans for ``budget`` (the plan fits the budget) and fill its cache with
    ``case_ids``; seconds."""
    from medzoo.data.cache import build_cache
    from medzoo.data.layouts import load_dataset
    from medzoo.engine.segment import plan_for

    start = time.perf_counter()
    info = load_dataset(str(data))
    plan = plan_for(medzoo_config(data, cache / "unused", cache, budget), info, progress=False, device="cpu")
    build_cache(info, plan, cache, cases=case_ids, progress=False)
    return time.perf_counter() - start


def run_medzoo(data: Path, work: Path, cache: Path, budget: str, split: dict[str, list[str]]) -> dict[str, Any]:
    """Fill the cache for ``budget``'s plan, train under ``budget``, predict fold 0's validation cases with TTA,
    score them."""
    import medzoo
    from medzoo.engine.splits import load_splits
    from medzoo.planning.plan import Plan

    preprocess_s = medzoo_preprocess(data, cache, split["train"] + split["val"], budget)
    out = work / f"medzoo_{budget}"
    res = medzoo.train(medzoo_config(data, out, cache, budget))
    if load_splits(out / "splits.json")[FOLD]["val"] != split["val"]:
        raise RuntimeError(f"{out}/splits.json: fold {FOLD} is not the split given to nnU-Net")
    images = work / "val_images"
    images.mkdir(exist_ok=True)
    by_id = {c.case_id: c for c in medzoo.load_dataset(str(data)).cases}
    for cid in split["val"]:
        link = images / f"{cid}.nii.gz"
        if not link.exists():
            link.symlink_to(Path(by_id[cid].image_paths[0]).resolve())
    start = time.perf_counter()
    medzoo.predict(out, images, out / "validation", checkpoint="best", device="cpu", tta=True, progress=False)
    predict_s = time.perf_counter() - start
    plan = Plan.load(out / "plan.json")
    return {"tool": "medzoo", "version": medzoo.__version__, "train_s": res.seconds, "steps": res.steps,
            "epochs": res.epochs, "iters_per_epoch": res.steps // max(res.epochs, 1),
            "patch": "x".join(map(str, plan.patch_size)), "batch": plan.batch_size, "checkpoint": "best",
            "preprocess_s": preprocess_s, "predict_s": predict_s, "stop": res.stop_reason, "run_dir": str(out),
            **score_folder(out / "validation", data, split["val"])}


# ----------------------------------------------------------------------------------------------- nnU-Net
def nnunet_version() -> str | None:
    """The installed nnunetv2's version, or None."""
    try:
        return metadata.version("nnunetv2")
    except metadata.PackageNotFoundError:
        return None


def nnunet_env(work: Path, results: Path, da_procs: int) -> dict[str, str]:
    """The environment of a worker: nnU-Net's folders and its CPU settings."""
    env = dict(os.environ)
    env.update(nnUNet_raw=str(work / "nnUNet_raw"), nnUNet_preprocessed=str(work / "nnUNet_preprocessed"),
               nnUNet_results=str(results), nnUNet_n_proc_DA=str(da_procs),
               nnUNet_def_n_proc=str(os.cpu_count() or 1), nnUNet_compile="false")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


def nnunet_worker(command: list[str], env: dict[str, str], log: Path) -> dict[str, Any]:
    """Run ``python -m benchmarks.nnunet_worker COMMAND``; its output goes to ``log``; returns its result."""
    result = log.with_suffix(".json")
    result.unlink(missing_ok=True)
    with log.open("w") as out:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.nnunet_worker", *command, "--result", str(result)],
                              env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0 or not result.is_file():
        last = (log.read_text().strip().splitlines() or [""])[-1]
        raise RuntimeError(f"nnU-Net worker {command[0]} failed (exit {proc.returncode}): {last} (see {log})")
    return json.loads(result.read_text())


def nnunet_schedule(budget_s: float, probe: dict[str, float]) -> dict[str, Any]:
    """nnU-Net's epochs and iterations for ``budget_s`` from the probe's timings.

    nnU-Net's own epochs (250 training + 50 validation iterations) when at least :data:`MIN_EPOCHS` fit in
    :data:`BUDGET_SHARE` of the budget, as many as fit (at most 1000); else :data:`MIN_EPOCHS` epochs (fewer if
    not even one iteration each fits) with as many iterations each as fit, a fifth of them for validation.

    Args:
        budget_s: the budget of ``run_training()`` in seconds.
        probe: ``setup_s`` (start-up, end and the first iteration's extra), ``step_s``, ``val_step_s``,
            ``epoch_overhead_s`` (seconds).

    Returns:
        ``{"epochs", "iterations", "val_iterations", "predicted_s"}``.
    """
    step, val_step, overhead = probe["step_s"], probe["val_step_s"], probe["epoch_overhead_s"]
    usable = budget_s * BUDGET_SHARE - probe["setup_s"]

    def seconds(epochs: int, iters: int, val_iters: int) -> float:
        return probe["setup_s"] + epochs * (iters * step + val_iters * val_step + overhead)

    full = NNUNET_ITERATIONS * step + NNUNET_VAL_ITERATIONS * val_step + overhead
    if usable >= MIN_EPOCHS * full:
        epochs = min(NNUNET_EPOCHS, int(usable // full))
        return {"epochs": epochs, "iterations": NNUNET_ITERATIONS, "val_iterations": NNUNET_VAL_ITERATIONS,
                "predicted_s": seconds(epochs, NNUNET_ITERATIONS, NNUNET_VAL_ITERATIONS)}
    ratio = NNUNET_VAL_ITERATIONS / NNUNET_ITERATIONS
    epochs = MIN_EPOCHS
    iters = int((usable / epochs - overhead) // (step + ratio * val_step))
    if iters < 1:  # not even one iteration per epoch: fewer epochs of one iteration and one validation
        epochs, iters = max(1, int(usable // (step + val_step + overhead))), 1
    val_iters = max(1, round(iters * ratio))
    return {"epochs": epochs, "iterations": iters, "val_iterations": val_iters,
            "predicted_s": seconds(epochs, iters, val_iters)}


def run_nnunet(work: Path, data: Path, budget: str, budget_s: float, probe: dict[str, float],
               split: dict[str, list[str]], da_procs: int, threads: int | None) -> dict[str, Any]:
    """Train nnU-Net with its schedule cut to ``budget``, run its final validation, score it."""
    sched = nnunet_schedule(budget_s, probe)
    results = work / f"nnunet_{budget}"
    command = ["train", "--epochs", str(sched["epochs"]), "--iterations", str(sched["iterations"]),
               "--val-iterations", str(sched["val_iterations"])] + (["--threads", str(threads)] if threads else [])
    out = nnunet_worker(command, nnunet_env(work, results, da_procs), work / f"nnunet_{budget}.log")
    return {"tool": "nnunet", "version": nnunet_version(), "train_s": out["train_s"],
            "steps": sched["epochs"] * sched["iterations"], "epochs": sched["epochs"],
            "iters_per_epoch": sched["iterations"], "val_iters_per_epoch": sched["val_iterations"],
            "predicted_train_s": sched["predicted_s"], "patch": out["patch"], "batch": out["batch"],
            "checkpoint": "final", "predict_s": out["predict_s"], "run_dir": out["output_folder"],
            **score_folder(Path(out["output_folder"]) / "validation", data, split["val"])}


def nnunet_prepare(work: Path, data: Path, folds: list[dict[str, list[str]]], processes: int, da_procs: int,
                   threads: int | None, quick: bool) -> dict[str, Any]:
    """Raw folder, fingerprint + plan + preprocessing (timed), ``splits_final.json``, and the probe."""
    write_nnunet_raw(data, work / "nnUNet_raw")
    env = nnunet_env(work, work / "nnunet_probe", da_procs)
    prep = nnunet_worker(["preprocess", "--processes", str(processes)], env, work / "nnunet_preprocess.log")
    splits = work / "nnUNet_preprocessed" / DATASET_NAME / "splits_final.json"
    splits.write_text(json.dumps(nnunet_splits(folds), indent=1))
    steps, val_steps = (3, 2) if quick else (PROBE_ITERATIONS, PROBE_VAL_ITERATIONS)
    start = time.perf_counter()
    probe = nnunet_worker(["probe", "--epochs", str(PROBE_EPOCHS), "--iterations", str(steps),
                           "--val-iterations", str(val_steps)]
                          + (["--threads", str(threads)] if threads else []), env, work / "nnunet_probe.log")
    probe["probe_s"] = time.perf_counter() - start
    return {**prep, "probe": probe}


# ------------------------------------------------------------------------------------------------- main
COLUMNS = ["budget", "tool", "epochs", "iters_per_epoch", "steps", "patch", "batch", "train_s", "preprocess_s",
           "predict_s", "dice_mean", "skipped"]


def main(argv: list[str] | None = None) -> dict:
    parser = make_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--budgets", default="5m,10m", help="comma-separated time budgets (default 5m,10m)")
    parser.add_argument("--tools", default="medzoo,nnunet", help="comma-separated: medzoo, nnunet")
    parser.add_argument("--runs-dir", type=Path, default=None, help="where runs go (default: a new temp dir)")
    parser.add_argument("--cases", type=int, default=None, help=f"train on the first N cases (--quick: {QUICK_CASES})")
    parser.add_argument("--processes", type=int, default=2, help="nnU-Net preprocessing processes (default 2)")
    parser.add_argument("--nnunet-da-procs", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                        help="nnUNet_n_proc_DA (default: half the cores, at least 1)")
    args = parser.parse_args(argv)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if not tools or set(tools) - set(TOOLS):
        parser.error(f"--tools takes {', '.join(TOOLS)}, got {args.tools!r}")
    data = hippocampus_dir()
    missing = ("Task04_Hippocampus not found (set MEDZOO_HIPPOCAMPUS_DIR)" if data is None else
               "nnunetv2 is not installed (pip install -c constraints.txt nnunetv2, or --tools medzoo)"
               if "nnunet" in tools and nnunet_version() is None else None)
    if missing:
        print(f"== {NAME}: skipped: {missing}")
        results = {"benchmark": NAME, "skipped": missing, "environment": environment(), "rows": []}
        write_results(NAME, results, args.out)
        return results
    return compare(args, tools, data)


def compare(args: Any, tools: list[str], data: Path) -> dict:
    """Preprocess for both tools, then train, predict and score each budget, tools interleaved."""
    from medzoo.utils import parse_duration

    threads = apply_threads(args.threads)
    work = args.runs_dir or Path(tempfile.mkdtemp(prefix="medzoo_vs_nnunet_"))
    work.mkdir(parents=True, exist_ok=True)
    data = subset_dataset(data, work, QUICK_CASES if args.quick and args.cases is None else args.cases)
    budgets = [QUICK_BUDGET] if args.quick else [b.strip() for b in args.budgets.split(",") if b.strip()]
    folds = fold_splits(data)
    split = folds[FOLD]
    print(f"== {NAME}: {len(split['train'])} training and {len(split['val'])} validation cases (fold {FOLD} of "
          f"{FOLDS}), budgets {', '.join(budgets)}, {threads} threads, runs in {work}")
    cache = work / "medzoo_cache"
    prep: dict[str, Any] = {}
    if "nnunet" in tools:
        prep = nnunet_prepare(work, data, folds, args.processes, args.nnunet_da_procs, args.threads, args.quick)
        probe = prep["probe"]
        print(f"   nnU-Net: preprocessing {prep['preprocess_s']:.1f} s; probe {probe['probe_s']:.1f} s: "
              f"{probe['step_s']:.2f} s per training iteration (batch {probe['batch']}, patch {probe['patch']}), "
              f"{probe['val_step_s']:.2f} s per validation iteration, {probe['epoch_overhead_s']:.1f} s per epoch, "
              f"{probe['setup_s']:.1f} s start-up")
    rows: list[dict[str, Any]] = []
    for budget in budgets:
        seconds = parse_duration(budget)
        for tool in tools:
            start = time.perf_counter()
            try:
                row = (run_medzoo(data, work, cache, budget, split) if tool == "medzoo" else
                       {**run_nnunet(work, data, budget, seconds, prep["probe"], split, args.nnunet_da_procs,
                                     args.threads), "preprocess_s": prep["preprocess_s"]})
            except Exception as err:  # noqa: BLE001 - report, let the other runs go on
                row = {"tool": tool, "skipped": f"{type(err).__name__}: {err}"[:500]}
            row = {"budget": budget, "budget_s": seconds, **row, "wall_s": time.perf_counter() - start}
            print(format_table([row], [c for c in COLUMNS if c in row]), flush=True)
            rows.append(row)
    dice_cols = sorted({k for r in rows for k in r if k.startswith("dice_") and k != "dice_mean"})
    cols = COLUMNS[:-2] + dice_cols + COLUMNS[-2:]
    print(f"== {NAME}: fold {FOLD} validation Dice on the original grids ({len(split['val'])} cases)")
    print(format_table(rows, cols))
    results = {"benchmark": NAME, "environment": {**environment(), "nnunetv2": nnunet_version()},
               "threads": threads, "data": str(data), "runs_dir": str(work), "split": split, "nnunet_preprocessing": prep,
               "rows": rows, "markdown": markdown_table(rows, cols)}
    print(f"wrote {write_results(NAME, results, args.out)}")
    return results


if __name__ == "__main__":
    main()
