"""Time to Dice: the plan a dataset gets and its held-out Dice after a time budget of ``medzoo train``.

Each budget is one fresh run with the trainer's defaults (the planner fits the plan to the budget) and
``time_budget`` set; the budget covers planning, preprocessing, training and the final validation. The held-out
figures: the trainer's final validation (on its validation split, on the preprocessed grid) and, from the best
checkpoint, a prediction of the same held-out cases on their own grids scored against their labels (what a user
gets; also says whether any prediction came out empty). Each row gives the plan (network, spatial dims,
spacing, patch, batch), the step price the plan was made with against the median step the run measured, and
the median share of training time the steps waited for the loader.

``--dataset``: ``hippocampus`` (default; ``$MEDZOO_HIPPOCAMPUS_DIR`` or ``../shared/data/Task04_Hippocampus``),
``brats2013`` (``$MEDZOO_BRATS2013_DIR`` or ``../shared/data/BraTS2013_deepmedic``, through the ``folder`` layout, FLAIR + T1c, labels 0-4;
``brats2013-regions``: the same trained and scored on the nested WT/TC/ET regions),
a phantom kind (``brain``, ``ct``, ``thick-mri``, ``multi-organ``: written first, ``--cases``/``--shape``), or a
dataset folder (``--layout``, ``--layout-option``). Skipped with a message when the data is missing. Long: one
timed run at a time on a quiet machine.

Run: ``python -m benchmarks.time_to_dice --dataset ct --budget 10m`` (``--budgets 10m,30m`` for several;
``--quick``: 20 s, to check the wiring).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
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

NAME = "time_to_dice"
REPO = Path(__file__).resolve().parent.parent
PHANTOM_KINDS = ("brain", "ct", "thick-mri", "multi-organ")
BRATS_LAYOUT = {
    "images": {"flair": "{case}/Flair_subtrMeanDivStd.nii.gz", "t1c": "{case}/T1c_subtrMeanDivStd.nii.gz"},
    "label": "{case}/OTMultiClass.nii.gz",
    "labels": {0: "background", 1: "necrosis", 2: "edema", 3: "non_enhancing", 4: "enhancing"},
}
#: the nested BraTS regions of OTMultiClass (whole tumour, tumour core, enhancing), for ``--regions``
BRATS_REGIONS = {"regions": {"WT": [1, 2, 3, 4], "TC": [1, 3, 4], "ET": [4]}, "regions_class_order": [2, 1, 4]}


def hippocampus_dir() -> Path | None:
    """The Task04_Hippocampus folder, or None if absent."""
    env = os.environ.get("MEDZOO_HIPPOCAMPUS_DIR")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data" / "Task04_Hippocampus"]:
        if (cand / "imagesTr").is_dir():
            return cand
    return None


def resolve_dataset(name: str, runs_dir: Path, cases: int, shape: tuple[int, int, int] | None, layout: str | None,
                    layout_options: dict[str, Any]) -> tuple[Path | None, str | None, dict[str, Any], str]:
    """(data folder or None, layout, layout options, why it is missing) for ``--dataset``."""
    if name == "hippocampus":
        data = hippocampus_dir()
        return data, layout, layout_options, "Task04_Hippocampus not found (set MEDZOO_HIPPOCAMPUS_DIR)"
    if name in ("brats2013", "brats2013-regions"):
        env = os.environ.get("MEDZOO_BRATS2013_DIR")
        data = Path(env) if env else REPO.parent / "shared" / "data" / "BraTS2013_deepmedic"
        regions = BRATS_REGIONS if name.endswith("-regions") else {}
        return ((data if data.is_dir() else None), "folder", {**BRATS_LAYOUT, **regions, **layout_options},
                f"{data} not found (set MEDZOO_BRATS2013_DIR)")
    if name in PHANTOM_KINDS:
        from medzoo.data.phantom import make_phantom_dataset

        data = make_phantom_dataset(runs_dir / f"phantom_{name}", cases=cases, seed=0, shape=shape, kind=name)
        return data, layout, layout_options, ""
    data = Path(name)
    return (data if data.exists() else None), layout, layout_options, f"{data} not found"


def _median_data_wait_pct(metrics_csv: Path) -> float:
    """Median over the run's epochs of the share of training time spent waiting for the loader (percent)."""
    import csv
    import statistics

    if not metrics_csv.is_file():
        return float("nan")
    with metrics_csv.open(newline="") as f:
        waits = [float(r["data_wait_fraction"]) for r in csv.DictReader(f) if r.get("data_wait_fraction")]
    return 100.0 * statistics.median(waits) if waits else float("nan")


def _median_step_s(run_dir: Path) -> float:
    """Median seconds per training step over the run's epochs that did not validate (metrics.csv's elapsed
    seconds between epochs, over ``iterations_per_epoch``): what the plan's step price is checked against."""
    import csv
    import json
    import statistics

    metrics, config = run_dir / "metrics.csv", run_dir / "config.json"
    if not metrics.is_file() or not config.is_file():
        return float("nan")
    iterations = json.loads(config.read_text()).get("iterations_per_epoch") or 1
    with metrics.open(newline="") as f:
        rows = list(csv.DictReader(f))
    gaps = [float(b["seconds"]) - float(a["seconds"]) for a, b in zip(rows, rows[1:]) if not b.get("val_dice_mean")]
    return statistics.median(gaps) / iterations if gaps else float("nan")


def group_dice(pred: Any, ref: Any, groups: list[list[int]]) -> list[float]:
    """Dice of each group of label values (a class: one value; a region: the values it unites) between two
    label maps; 1.0 where both lack the group."""
    import numpy as np

    from medzoo.metrics import dice_per_class

    return [float(dice_per_class(np.isin(pred, g), np.isin(ref, g), 2)[1]) for g in groups]


def held_out_dice(run_dir: Path, data: Path, layout: str | None, layout_options: dict[str, Any]) -> dict[str, Any]:
    """Predict the run's validation cases on their own grids (best checkpoint) and score them: mean Dice per
    class (per region, for a region run) over the cases, the mean over them, and how many predictions have no
    foreground at all."""
    import numpy as np

    from medzoo.data.layouts import load_dataset
    from medzoo.data.loading import load_case
    from medzoo.engine.splits import load_splits
    from medzoo.inference.predictor import Predictor

    info = load_dataset(str(data), layout=layout, **layout_options)
    val = set(load_splits(run_dir / "splits.json")[0]["val"])
    predictor = Predictor.from_run(run_dir, checkpoint="best", device="cpu")
    plan = predictor.plan
    # a region run paints each region's own label value, so a region is the set of its label values in both maps
    groups = list(plan.regions.values()) if plan.regions else [[i] for i in range(1, plan.num_classes)]
    names = list(plan.regions) if plan.regions else [plan.labels[i] for i in range(1, plan.num_classes)]
    scores, empty, t0 = [], 0, time.perf_counter()
    for case in [c for c in info.cases if c.case_id in val]:
        image, label = load_case(case, info)
        pred = predictor.predict_volume(image)
        assert pred.spatial_shape == image.spatial_shape  # geometry is sacred
        empty += int(pred.array.max() == 0)
        scores.append(group_dice(pred.array[0], label.array[0], groups))
    per_class = np.mean(scores, axis=0)
    return {"heldout_cases": len(scores), "heldout_empty": empty, "heldout_dice_mean": float(per_class.mean()),
            "heldout_predict_s": time.perf_counter() - t0,
            **{f"heldout_dice_{n}": float(v) for n, v in zip(names, per_class)}}


def _plan_columns(run_dir: Path) -> dict[str, Any]:
    from medzoo.planning.plan import Plan

    plan = Plan.load(run_dir / "plan.json")
    spacing = "native" if plan.target_spacing is None else "x".join(f"{s:.2f}" for s in plan.target_spacing)
    return {"network": f"{plan.model} {plan.model_kwargs.get('features', '')}".strip(), "dims": plan.spatial_dims,
            "spacing": spacing, "patch": "x".join(map(str, plan.patch_size)), "batch": plan.batch_size,
            "price_s": (plan.extra.get("step_price") or {}).get("step_seconds"),
            "reasons": plan.extra.get("reasons", {})}


def main(argv: list[str] | None = None) -> dict:
    from medzoo.cli.options import key_value

    parser = make_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--dataset", default="hippocampus",
                        help="hippocampus, brats2013, brats2013-regions, a phantom kind (brain, ct, thick-mri, multi-organ) or a folder")
    parser.add_argument("--budget", default=None, help="one time budget, e.g. 10m")
    parser.add_argument("--budgets", default="5m,10m", help="comma-separated time budgets (when --budget is not given)")
    parser.add_argument("--layout", default=None, help="dataset layout of a folder (default: auto-detect)")
    parser.add_argument("--layout-option", type=key_value, action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--cases", type=int, default=20, help="phantom cases to write (default 20)")
    parser.add_argument("--shape", type=int, nargs=3, default=None, help="phantom shape (default: the kind's)")
    parser.add_argument("--runs-dir", type=Path, default=None, help="where run folders go (default: a temp dir)")
    parser.add_argument("--plan-for-budget", action=argparse.BooleanOptionalAction, default=True,
                        help="train on the budget plan (default, as medzoo train); --no-plan-for-budget: the "
                             "budget-free plan")
    parser.add_argument("--memory-format", default="auto", choices=["auto", "channels_last", "contiguous"],
                        help="the trainer's memory_format (A/B against the default)")
    parser.add_argument("--no-predict", action="store_true", help="skip the held-out prediction on original grids")
    parser.add_argument("--set", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                        help="a TrainConfig field (patch_size=[56,56,48], batch_size=2, model_kwargs={...}) or "
                             "a plan setting (mirror_axes=[0,1,2]) for a controlled comparison (repeatable)")
    args = parser.parse_args(argv)
    threads = apply_threads(args.threads)
    runs_dir = args.runs_dir or Path(tempfile.mkdtemp(prefix="medzoo_ttd_"))
    runs_dir.mkdir(parents=True, exist_ok=True)
    data, layout, options, missing = resolve_dataset(args.dataset, runs_dir, args.cases,
                                                     tuple(args.shape) if args.shape else None, args.layout,
                                                     dict(args.layout_option))
    if data is None:
        print(f"== {NAME}: skipped: {missing}")
        results = {"benchmark": NAME, "skipped": missing, "environment": environment()}
        write_results(NAME, results, args.out)
        return results
    from medzoo.engine.config import TrainConfig
    from medzoo.engine.trainer import train

    config_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    settings = dict(args.set)
    config_settings = {k: v for k, v in settings.items() if k in config_fields}
    plan_settings = {k: v for k, v in settings.items() if k not in config_fields}

    budgets = ["20s"] if args.quick else (args.budget or args.budgets).split(",")
    rows: list[dict[str, Any]] = []
    tag = Path(args.dataset).name.replace(" ", "_")
    for budget in budgets:
        out = runs_dir / f"{tag}_{budget}"
        start = time.perf_counter()
        try:
            res = train(TrainConfig(data=str(data), out=str(out), time_budget=budget, progress=False, layout=layout,
                                    layout_options=options, memory_format=args.memory_format,
                                    plan_for_budget=args.plan_for_budget, plan_overrides=plan_settings,
                                    **config_settings))
        except Exception as err:  # noqa: BLE001 - report, do not crash the suite
            rows.append({"dataset": args.dataset, "budget": budget, "skipped": f"{type(err).__name__}: {err}"[:300]})
            continue
        row = {"dataset": args.dataset, "budget": budget, **({"settings": settings} if settings else {}), "wall_s": time.perf_counter() - start, **_plan_columns(out),
               "steps": res.steps, "epochs": res.epochs, "val_dice_mean": res.final_metrics.get("val_dice_mean"),
               "best_metric": res.best_metric, "data_wait_pct_median": _median_data_wait_pct(out / "metrics.csv"),
               "step_s": _median_step_s(out), "run_dir": str(res.run_dir)}
        row.update({f"final_{k}": v for k, v in res.final_metrics.items() if isinstance(v, (int, float))})
        if not args.no_predict:
            try:
                row.update(held_out_dice(out, data, layout, options))
            except Exception as err:  # noqa: BLE001 - report
                row["heldout_error"] = f"{type(err).__name__}: {err}"[:300]
        rows.append(row)
    cols = ["dataset", "budget", "network", "dims", "spacing", "patch", "batch", "price_s", "step_s", "steps",
            "val_dice_mean",
            "heldout_dice_mean", "heldout_empty", "wall_s", "data_wait_pct_median", "skipped"]
    print(f"== {NAME}: Dice after a time budget, {threads} threads, data {data}")
    print(format_table(rows, cols))
    for row in rows:
        for key, text in row.get("reasons", {}).items():
            print(f"  {row['budget']} {key}: {text}")
    results = {"benchmark": NAME, "environment": environment(), "threads": threads, "rows": rows,
               "markdown": markdown_table(rows, cols)}
    print(f"wrote {write_results(NAME, results, args.out)}")
    return results


if __name__ == "__main__":
    main()
