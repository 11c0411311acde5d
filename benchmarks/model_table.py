"""The README model table: every segmentation network's parameter count and Dice on demo phantoms after one
fixed, short CPU training budget.

Workload: ``medzoo.data.phantom.make_phantom_dataset`` (two-channel T1/T2 phantoms, 3 foreground classes),
then :func:`medzoo.engine.trainer.train` for each model with the same settings (seed 0, AdamW, batch 2,
the planner's patch for the model's size rule, ``--budget`` seconds wall-clock covering training and the
final validation). Dice is the trainer's best validation mean foreground Dice (sliding window on the held-out
20% of the cases). Short budgets favour small, fast networks: read the column as "what you get in N seconds
on this CPU", not as the network's quality at convergence. Classification models are listed as skipped.

Run: ``python -m benchmarks.model_table [--budget 60] [--pattern '*unet*'] [--quick]``;
writes ``benchmarks/results/model_table.json`` and prints the markdown table for the README.
"""

from __future__ import annotations

import logging
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

NAME = "model_table"
COLUMNS = ["model", "dims", "params", "size rule", "patch", "steps", "dice", "seconds", "paper"]


def _row(name: str, data: Path, runs: Path, budget: float, cases: int) -> dict[str, Any]:
    from medzoo.engine.config import TrainConfig
    from medzoo.engine.trainer import train
    from medzoo.models import count_parameters, create_model, get_card

    card = get_card(name)
    dims = 3 if 3 in card.spatial_dims else card.spatial_dims[0]
    row: dict[str, Any] = {"model": name, "dims": f"{dims}D", "size rule": card.size_rule, "paper": card.paper}
    if card.task != "segmentation":
        row["skipped"] = f"task is {card.task}"
        return row
    row["params"] = count_parameters(create_model(name, in_channels=2, num_classes=4, spatial_dims=dims))
    config = TrainConfig(
        data=str(data), out=str(runs / name), model=name, spatial_dims=dims, time_budget=budget,
        iterations_per_epoch=20, batch_size=2, optimizer="adamw", seed=0, device="cpu", num_workers=1,
        progress=False, log_images=False, max_val_cases=max(1, cases // 5),
    )
    start = time.perf_counter()
    try:
        result = train(config)
    except Exception as err:  # noqa: BLE001 - one failing network must not hide the others' numbers
        row["skipped"] = f"{type(err).__name__}: {err}"
        return row
    plan_patch = _plan_patch(runs / name)
    row.update(patch=plan_patch, steps=result.steps, dice=float(result.best_metric),
               seconds=time.perf_counter() - start)
    return row


def _plan_patch(run_dir: Path) -> str:
    import json

    try:
        plan = json.loads((run_dir / "plan.json").read_text())
        return "x".join(str(p) for p in plan["patch_size"])
    except (OSError, KeyError, ValueError):
        return "-"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = make_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=60.0, help="training seconds per model")
    parser.add_argument("--pattern", default=None, help="glob over model names, e.g. '*unet*'")
    parser.add_argument("--cases", type=int, default=10, help="phantom cases (80/20 train/validation)")
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    from medzoo.data.phantom import make_phantom_dataset
    from medzoo.models import list_models

    names = list_models(args.pattern)
    budget, cases, shape = args.budget, args.cases, None
    if args.quick:
        names = [n for n in names if n in ("unet3d", "segresnet")] or names[:1]
        budget, cases, shape = 6.0, 4, (32, 32, 24)
    rows = []
    with tempfile.TemporaryDirectory(prefix="medzoo_model_table_") as tmp:
        data = make_phantom_dataset(Path(tmp) / "phantoms", cases=cases, seed=0, shape=shape)
        for name in names:
            row = _row(name, Path(data), Path(tmp) / "runs", budget, cases)
            rows.append(row)
            print(format_table([row], COLUMNS + ["skipped"]).splitlines()[-1], flush=True)
            # Written after every model, so a run cut short (time, memory) still leaves its numbers.
            write_results(NAME, {"benchmark": NAME, "partial": True, "budget_seconds": budget, "rows": rows},
                          args.out)
    for row in rows:
        if isinstance(row.get("params"), int):
            row["params"] = f"{row['params'] / 1e6:.2f}M"
    results = {"benchmark": NAME, "environment": environment(), "budget_seconds": budget, "cases": cases,
               "rows": rows}
    print(format_table(rows, COLUMNS + ["skipped"]))
    print()
    print(markdown_table([r for r in rows if "skipped" not in r], COLUMNS))
    path = write_results(NAME, results, args.out)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
