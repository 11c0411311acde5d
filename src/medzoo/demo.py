"""The demo: phantom data -> train -> predict held-out cases -> evaluate -> overlay picture.

It shows the whole pipeline in a few minutes on a laptop CPU, using only the public API, so it doubles as
an example to copy::

    from medzoo.demo import run_demo
    result = run_demo("medzoo_demo", time_budget="3m")
    print(result.mean_dice)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class DemoResult:
    """What the demo produced.

    Attributes:
        out_dir: the demo folder (data/, run/, predictions/, evaluation.json, report/, overlay.png).
        mean_dice: mean foreground Dice over the held-out cases.
        per_class_dice: class name -> mean Dice over the held-out cases.
        train_seconds: wall-clock time of training (including its final validation).
        table: the printed summary table.
    """

    out_dir: Path
    mean_dice: float
    per_class_dice: dict[str, float]
    train_seconds: float
    table: str
    files: dict[str, Path] = field(default_factory=dict)


def run_demo(
    out_dir: str | Path = "medzoo_demo",
    *,
    time_budget: str | float = "2.5m",
    cases: int = 16,
    test_cases: int = 4,
    seed: int = 0,
    model: str | None = None,
    train_overrides: dict[str, Any] | None = None,
) -> DemoResult:
    """Run the end-to-end demo.

    Args:
        out_dir: folder for everything the demo writes (created).
        time_budget: training wall-clock budget (training + its final validation), e.g. "2.5m".
        cases: phantom training cases (a fifth of them are used for validation).
        test_cases: held-out phantom cases predicted and evaluated at the end.
        seed: phantom and training seed.
        model: registry name; None lets the planner choose.
        train_overrides: extra :class:`~medzoo.engine.config.TrainConfig` fields.

    Returns:
        A :class:`DemoResult`.
    """
    from medzoo.data.phantom import make_phantom_dataset
    from medzoo.engine.config import TrainConfig
    from medzoo.engine.trainer import train
    from medzoo.evaluation import evaluate
    from medzoo.inference.predictor import predict
    from medzoo.io.readers import read_volume
    from medzoo.viz.overlay import save_overlay_png

    out = Path(out_dir)
    data_dir, run_dir, pred_dir = out / "data", out / "run", out / "predictions"
    log.info("[1/5] writing %d + %d phantom cases to %s", cases, test_cases, data_dir)
    make_phantom_dataset(data_dir, cases=cases, test_cases=test_cases, seed=seed)

    log.info("[2/5] training for at most %s", time_budget)
    settings: dict[str, Any] = {"seed": seed}
    settings.update(train_overrides or {})
    config = TrainConfig(data=str(data_dir), out=str(run_dir), model=model, time_budget=time_budget, **settings)
    start = time.perf_counter()
    result = train(config)
    train_seconds = time.perf_counter() - start
    log.info("      %d epochs in %.0f s, best validation Dice %.3f", result.epochs, train_seconds,
             result.best_metric)

    log.info("[3/5] predicting %d held-out cases", test_cases)
    predict(run_dir, data_dir / "imagesTs", pred_dir)

    log.info("[4/5] evaluating against the held-out labels")
    evaluation = evaluate(
        pred_dir, data_dir / "labelsTs", out_json=out / "evaluation.json", report_dir=out / "report",
        images_dir=data_dir / "imagesTs", dataset_json=data_dir / "dataset.json",
    )
    per_class, mean_dice = _per_class_means(evaluation)

    log.info("[5/5] drawing an overlay of the first held-out case")
    first = sorted((data_dir / "imagesTs").glob("*.nii.gz"))[0]
    image = read_volume(first)
    prediction = read_volume(pred_dir / first.name)
    overlay = save_overlay_png(
        image.array[0], prediction.array[0], out / "overlay.png", spacing=image.spacing,
        title=f"{first.name}: prediction (mean Dice {mean_dice:.3f})",
    )

    table = _table(per_class, mean_dice, train_seconds)
    files = {"overlay": Path(overlay), "evaluation": out / "evaluation.json", "run": run_dir,
             "predictions": pred_dir, "report": Path(evaluation.report_path)}
    return DemoResult(out, mean_dice, per_class, train_seconds, table, files)


def _per_class_means(evaluation: Any) -> tuple[dict[str, float], float]:
    """Class name -> mean Dice, and the mean over foreground classes, from an EvaluationResult."""
    summary = evaluation.summary
    per_class = {name: float(stats["dice"]["mean"]) for name, stats in summary["per_class"].items()}
    return per_class, float(np.mean(list(per_class.values())))


def _table(per_class: dict[str, float], mean_dice: float, seconds: float) -> str:
    width = max(len(n) for n in [*per_class, "mean foreground"])
    lines = [f"{'class'.ljust(width)}  Dice", f"{'-' * width}  -----"]
    lines += [f"{name.ljust(width)}  {dice:.3f}" for name, dice in per_class.items()]
    lines += [f"{'mean foreground'.ljust(width)}  {mean_dice:.3f}", "", f"training time: {seconds:.0f} s"]
    return "\n".join(lines)
