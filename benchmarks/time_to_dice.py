"""Time to Dice: validation Dice on Task04_Hippocampus after 5 and 10 minutes of ``medzoo.engine.trainer.train``.

Each budget is one fresh run with the trainer's defaults (the planner picks the network) and
``time_budget`` set; the budget covers training and the final validation. Each row also gives the median
over epochs of the share of training time the steps waited for the loader (``data_wait_pct_median``, from
``metrics.csv``). Skipped with a message when the
data (``$MEDZOO_HIPPOCAMPUS_DIR`` or ``../shared/data/Task04_Hippocampus``) or the trainer is missing.
Long: only run with ``python -m benchmarks --only time_to_dice`` or ``--full``.

Run: ``python -m benchmarks.time_to_dice [--budgets 5m,10m] [--memory-format contiguous] [--quick]`` (``--quick``: 20 s, to check the wiring).
"""

from __future__ import annotations

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


def hippocampus_dir() -> Path | None:
    """The Task04_Hippocampus folder, or None if absent."""
    env = os.environ.get("MEDZOO_HIPPOCAMPUS_DIR")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data" / "Task04_Hippocampus"]:
        if (cand / "imagesTr").is_dir():
            return cand
    return None


def _median_data_wait_pct(metrics_csv: Path) -> float:
    """Median over the run's epochs of the share of training time spent waiting for the loader (percent)."""
    import csv
    import statistics

    with metrics_csv.open(newline="") as f:
        waits = [float(r["data_wait_fraction"]) for r in csv.DictReader(f) if r.get("data_wait_fraction")]
    return 100.0 * statistics.median(waits) if waits else float("nan")


def main(argv: list[str] | None = None) -> dict:
    parser = make_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--budgets", default="5m,10m", help="comma-separated time budgets")
    parser.add_argument("--runs-dir", type=Path, default=None, help="where run folders go (default: a temp dir)")
    parser.add_argument("--memory-format", default="auto", choices=["auto", "channels_last", "contiguous"],
                        help="the trainer's memory_format (A/B against the default)")
    args = parser.parse_args(argv)
    threads = apply_threads(args.threads)
    data = hippocampus_dir()
    skipped = None
    try:
        from medzoo.engine.config import TrainConfig
        from medzoo.engine.trainer import train
    except ImportError as err:
        skipped = f"trainer not available ({err})"
    if data is None:
        skipped = "Task04_Hippocampus not found (set MEDZOO_HIPPOCAMPUS_DIR or put it in ../shared/data)"
    if skipped:
        print(f"== {NAME}: skipped: {skipped}")
        results = {"benchmark": NAME, "skipped": skipped, "environment": environment()}
        write_results(NAME, results, args.out)
        return results
    budgets = ["20s"] if args.quick else args.budgets.split(",")
    rows: list[dict[str, Any]] = []
    runs_dir = args.runs_dir or Path(tempfile.mkdtemp(prefix="medzoo_ttd_"))
    for budget in budgets:
        out = runs_dir / f"hippocampus_{budget}"
        start = time.perf_counter()
        try:
            res = train(TrainConfig(data=str(data), out=str(out), time_budget=budget, progress=False,
                                    memory_format=args.memory_format))
        except Exception as err:  # noqa: BLE001 - report, do not crash the suite
            rows.append({"budget": budget, "skipped": f"{type(err).__name__}: {err}"[:300]})
            continue
        row = {"budget": budget, "memory_format": args.memory_format, "wall_s": time.perf_counter() - start, "epochs": res.epochs, "steps": res.steps,
               "best_metric": res.best_metric, "best_epoch": res.best_epoch, "run_dir": str(res.run_dir)}
        row.update({f"final_{k}": v for k, v in res.final_metrics.items() if isinstance(v, (int, float))})
        row["data_wait_pct_median"] = _median_data_wait_pct(out / "metrics.csv")
        rows.append(row)
    cols = ["budget", "memory_format", "wall_s", "epochs", "steps", "best_metric", "data_wait_pct_median"] + sorted(
        {k for r in rows for k in r if k.startswith("final_")}) + ["skipped"]
    print(f"== {NAME}: validation Dice after a time budget, {threads} threads, data {data}")
    print(format_table(rows, cols))
    results = {"benchmark": NAME, "environment": environment(), "threads": threads, "rows": rows,
               "markdown": markdown_table(rows, cols)}
    print(f"wrote {write_results(NAME, results, args.out)}")
    return results


if __name__ == "__main__":
    main()
