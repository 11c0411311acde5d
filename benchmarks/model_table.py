"""The model table of docs/benchmarks.md: every segmentation network's parameter count and Dice on demo phantoms after one
fixed, short CPU training budget.

Workload: ``medzoo.data.phantom.make_phantom_dataset`` (two-channel T1/T2 phantoms, 3 foreground classes),
then :func:`medzoo.engine.trainer.train` for each model with the same settings (seed 0, AdamW, batch 2, the
planner's patch capped at the card's typical patch, ``--budget`` seconds wall-clock covering planning,
caching, training and the final validation). Dice is the trainer's best validation mean foreground Dice
(sliding window on the held-out 20% of the cases). Short budgets favour small, fast networks: read the column
as "what you get in N seconds on this CPU", not as the network's quality at convergence. A network whose
single training step does not fit the budget is reported with 0 steps and no Dice (the trainer never starts
a step or validation it cannot finish). Classification models are listed as skipped.

Run (one command, all models; about ``models x (budget + 3 s)``, e.g. 23 x 33 s = 13 minutes at 30 s)::

    python -m benchmarks.model_table --budget 30

``--pattern '*unet*,vnet'`` restricts the models (comma-separated globs). Writes ``benchmarks/results/model_table.json`` (after every
model, so a run cut short keeps its rows) and prints the markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import logging
import math
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
MARGIN = 2.0  # seconds past the budget a run may take (final checkpoint, curves) before it is flagged


def _patch(name: str, data: Path, dims: int) -> tuple[int, ...]:
    """The planner's patch for ``name`` on ``data``, capped per axis at the card's typical patch (kept valid
    for the network's size rule), so full-resolution networks train on the patch their card recommends."""
    import math

    from medzoo.data.layouts import load_dataset
    from medzoo.models import get_card
    from medzoo.planning.planner import make_plan

    card = get_card(name)
    plan = make_plan(load_dataset(str(data)), None, model=name, spatial_dims=dims, batch_size=2)
    divisor = int(plan.extra.get("size_divisor", card.size_divisor)) or 1
    typical = card.typical_patch[-dims:]
    out = []
    for p, t in zip(plan.patch_size, typical):
        if t < p:
            p = min(p, int(math.ceil(card.valid_size(t) / divisor) * divisor))
        out.append(int(p))
    return tuple(out)


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
    import torch

    with torch.device("meta"):  # parameter count without memory or initialisation cost
        row["params"] = count_parameters(create_model(name, in_channels=2, num_classes=4, spatial_dims=dims))
    try:
        patch = _patch(name, data, dims)
        config = TrainConfig(
            data=str(data), out=str(runs / name), model=name, spatial_dims=dims, time_budget=budget,
            iterations_per_epoch=20, batch_size=2, patch_size=patch, optimizer="adamw", seed=0, device="cpu",
            num_workers=1, progress=False, log_images=False, max_val_cases=max(1, cases // 5),
        )
        result = train(config)
    except Exception as err:  # noqa: BLE001 - one failing network must not hide the others' numbers
        row["skipped"] = f"{type(err).__name__}: {err}"
        return row
    seconds = result.seconds  # what the budget covers: planning, caching, training, validation, wrap-up
    dice = float(result.best_metric)
    row.update(patch="x".join(map(str, patch)), steps=result.steps,
               dice=dice if math.isfinite(dice) else "-", seconds=seconds, stop=result.stop_reason)
    if result.steps == 0:
        row["note"] = "one training step does not fit the budget"
    if seconds > budget + MARGIN:
        row["note"] = f"over budget by {seconds - budget:.1f}s"
    return row


def _warm_imports() -> None:
    """Pay the one-off imports (torch._dynamo on the first optimizer, matplotlib, TensorBoard) before the first
    model's clock starts, so every model gets the same budget for the same work."""
    import torch

    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    try:
        import matplotlib.pyplot  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = make_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=30.0, help="wall-clock seconds per model (default 30)")
    parser.add_argument("--pattern", default=None, help="glob(s) over model names, comma-separated, e.g. '*unet*,vnet'")
    parser.add_argument("--cases", type=int, default=10, help="phantom cases (80/20 train/validation)")
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    from medzoo.data.phantom import make_phantom_dataset
    from medzoo.models import list_models

    patterns = args.pattern.split(",") if args.pattern else [None]
    names = sorted({n for pattern in patterns for n in list_models(pattern)})
    budget, cases, shape = args.budget, args.cases, None
    if args.quick:
        names = [n for n in names if n in ("unet3d", "segresnet")] or names[:1]
        budget, cases, shape = 6.0, 4, (32, 32, 24)
    _warm_imports()
    rows = []
    total = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="medzoo_model_table_") as tmp:
        data = make_phantom_dataset(Path(tmp) / "phantoms", cases=cases, seed=0, shape=shape)
        for name in names:
            row = _row(name, Path(data), Path(tmp) / "runs", budget, cases)
            rows.append(row)
            print(format_table([row], COLUMNS + ["note", "skipped"]).splitlines()[-1], flush=True)
            # Written after every model, so a run cut short (time, memory) still leaves its numbers.
            write_results(NAME, {"benchmark": NAME, "partial": True, "budget_seconds": budget, "rows": rows},
                          args.out)
    for row in rows:
        if isinstance(row.get("params"), int):
            row["params"] = f"{row['params'] / 1e6:.2f}M"
    total = time.perf_counter() - total
    over = [r["model"] for r in rows if "over budget" in str(r.get("note", ""))]
    results = {"benchmark": NAME, "environment": environment(), "budget_seconds": budget, "cases": cases,
               "margin_seconds": MARGIN, "total_seconds": total, "over_budget": over, "rows": rows}
    print(format_table(rows, COLUMNS + ["note", "skipped"]))
    print(f"total {total:.0f}s for {len(rows)} models; over budget + {MARGIN:.0f}s: {over or 'none'}")
    print()
    print(markdown_table([r for r in rows if "skipped" not in r], COLUMNS))
    path = write_results(NAME, results, args.out)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
