"""Training curves from a run's ``metrics.csv``.

The CSV has one row per epoch and any of these columns (missing columns or empty cells are skipped):
``epoch``, ``train_loss``, ``val_loss``, ``lr``, ``val_dice_mean`` and ``val_dice_<name>`` per class.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from medzoo.errors import DataError
from medzoo.utils import atomic_write

__all__ = ["plot_training_curves", "read_metrics_csv"]


def _to_float(text: str | None) -> float:
    try:
        value = float(text) if text not in (None, "") else math.nan
    except ValueError:
        value = math.nan
    return value


def read_metrics_csv(csv_path: str | Path) -> dict[str, np.ndarray]:
    """Columns of a metrics CSV as float arrays (empty or non-numeric cells become NaN).

    Raises:
        DataError: the file has no header or no ``epoch`` column.
    """
    path = Path(csv_path)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames:
            raise DataError(f"{path}: empty metrics CSV (expected a header with 'epoch')")
        rows = list(reader)
        fields = [f.strip() for f in reader.fieldnames]
    if "epoch" not in fields:
        raise DataError(f"{path}: no 'epoch' column (columns: {', '.join(fields)})")
    return {f: np.array([_to_float(r.get(f)) for r in rows], dtype=np.float64) for f in fields}


def plot_training_curves(csv_path: str | Path, png_path: str | Path) -> Path:
    """Plot losses, validation Dice (mean and per class) and the learning rate against epochs.

    Panels appear only for the columns present: losses (``train_loss``, ``val_loss``), Dice
    (``val_dice_mean`` bold, ``val_dice_<name>`` thin) and ``lr`` (log scale). Written atomically.

    Returns:
        ``png_path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = read_metrics_csv(csv_path)
    epoch = cols["epoch"]

    def has(name: str) -> bool:
        return name in cols and bool(np.isfinite(cols[name]).any())

    dice_cols = [c for c in cols if c.startswith("val_dice_") and c != "val_dice_mean" and has(c)]
    panels = []
    if has("train_loss") or has("val_loss"):
        panels.append("loss")
    if has("val_dice_mean") or dice_cols:
        panels.append("dice")
    if has("lr"):
        panels.append("lr")
    if not panels:
        panels.append("empty")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)

    def line(ax, name: str, **kw) -> None:
        ok = np.isfinite(cols[name]) & np.isfinite(epoch)
        ax.plot(epoch[ok], cols[name][ok], marker="." if ok.sum() < 30 else None, **kw)

    for ax, panel in zip(axes[0], panels):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if panel == "loss":
            for name in ("train_loss", "val_loss"):
                if has(name):
                    line(ax, name, label=name)
            ax.set_title("loss")
            ax.legend(fontsize=8)
        elif panel == "dice":
            for name in dice_cols:
                line(ax, name, label=name.removeprefix("val_dice_"), linewidth=1, alpha=0.8)
            if has("val_dice_mean"):
                line(ax, "val_dice_mean", label="mean", linewidth=2.5, color="black")
            ax.set_title("validation Dice")
            ax.set_ylim(0, 1)
            ax.legend(fontsize=8)
        elif panel == "lr":
            line(ax, "lr", color="tab:purple")
            lr = cols["lr"][np.isfinite(cols["lr"])]
            if (lr > 0).all():
                ax.set_yscale("log")
            ax.set_title("learning rate")
        else:
            ax.set_title("no metrics yet")
    fig.tight_layout()
    out = Path(png_path)
    try:
        atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)
    return out
