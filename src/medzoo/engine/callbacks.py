"""Things that watch the training loop: CSV and TensorBoard logging, a progress bar, early stopping.

A callback gets ``on_train_start(run_dir, start_epoch)``, ``on_step_end(step, loss)``,
``on_epoch_end(epoch, logs)``, ``on_validation_image(epoch, image_rgb)`` and ``on_train_end(logs)``.
``logs`` is a flat dict: ``epoch``, ``train_loss``, ``lr``, ``seconds`` and, on validation epochs,
``val_dice_mean`` and ``val_dice_<class name>``. Callbacks run on rank 0 only.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from medzoo.logs import bar, format_seconds

log = logging.getLogger(__name__)


class Callback:
    """No-op base class; override the hooks you need."""

    def on_train_start(self, run_dir: Path, start_epoch: int) -> None:
        pass

    def on_epoch_start(self, epoch: int, total_steps: int) -> None:
        pass

    def on_step_end(self, step: int, loss: float) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        pass

    def on_validation_image(self, epoch: int, image_rgb: np.ndarray) -> None:
        pass

    def on_train_end(self, logs: dict[str, Any]) -> None:
        pass


class CallbackList(Callback):
    """Calls every hook of every callback in order."""

    def __init__(self, callbacks: list[Callback]) -> None:
        self.callbacks = list(callbacks)

    def _call(self, hook: str, *args: Any) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(*args)

    def on_train_start(self, run_dir: Path, start_epoch: int) -> None:
        self._call("on_train_start", run_dir, start_epoch)

    def on_epoch_start(self, epoch: int, total_steps: int) -> None:
        self._call("on_epoch_start", epoch, total_steps)

    def on_step_end(self, step: int, loss: float) -> None:
        self._call("on_step_end", step, loss)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        self._call("on_epoch_end", epoch, logs)

    def on_validation_image(self, epoch: int, image_rgb: np.ndarray) -> None:
        self._call("on_validation_image", epoch, image_rgb)

    def on_train_end(self, logs: dict[str, Any]) -> None:
        self._call("on_train_end", logs)

    def close(self) -> None:
        for cb in self.callbacks:
            if hasattr(cb, "close"):
                cb.close()


class CSVLogger(Callback):
    """``metrics.csv``: one row per epoch with fixed columns (empty cells on epochs without validation).

    Columns: ``epoch, train_loss, lr, <metric_columns...>, seconds`` (segmentation: ``val_dice_mean`` and
    ``val_dice_<class name>``; classification: ``val_accuracy``, ``val_auc``).

    On resume, rows of epochs after the resumed checkpoint are dropped (they belong to the lost run).
    """

    def __init__(self, path: Path, metric_columns: list[str]) -> None:
        self.path = Path(path)
        self.columns = ["epoch", "train_loss", "lr", *metric_columns, "seconds"]

    def on_train_start(self, run_dir: Path, start_epoch: int) -> None:
        rows = []
        if start_epoch > 0 and self.path.is_file():
            with self.path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= start_epoch]
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        row = {k: _fmt(logs.get(k)) for k in self.columns}
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore").writerow(row)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)


class TensorBoardLogger(Callback):
    """Scalars (loss, learning rate, Dice per class) and a validation overlay image in ``tensorboard/``."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self.writer = None

    def on_train_start(self, run_dir: Path, start_epoch: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.log_dir), purge_step=start_epoch + 1 if start_epoch else None)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        for key, value in logs.items():
            if key == "epoch" or not isinstance(value, (int, float)) or math.isnan(value):
                continue
            tag = key.replace("val_dice_", "val_dice/") if key.startswith("val_dice_") else key
            self.writer.add_scalar(tag, value, epoch)
        self.writer.flush()

    def on_validation_image(self, epoch: int, image_rgb: np.ndarray) -> None:
        self.writer.add_image("val/overlay", np.asarray(image_rgb), epoch, dataformats="HWC")

    def on_train_end(self, logs: dict[str, Any]) -> None:
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class ProgressBar(Callback):
    """Progress of a run: on a terminal, a bar per epoch (its steps and loss); everywhere, one line per finished
    epoch with the loss, learning rate, validation score, time elapsed and time remaining
    (:mod:`medzoo.logs`: no bar where the output is a file, a pipe or a scheduler's log).

    Args:
        max_epochs: the run's epochs (a huge number for a run bounded by ``budget_seconds``).
        budget_seconds: the run's time budget, if any (the remaining time is what is left of it).
        show_bar: draw the bar where the output is interactive (lines are written either way).
        stream: where the bar goes (default ``sys.stderr``).
    """

    def __init__(self, max_epochs: int, budget_seconds: float | None = None, show_bar: bool = True,
                 stream: Any = None) -> None:
        self.max_epochs = max_epochs
        self.budget_seconds = budget_seconds
        self.show_bar = show_bar
        self.stream = stream
        self.bar = None
        self.session_start: tuple[int, float] | None = None  # (epoch, monotonic time) of this session's start

    def on_train_start(self, run_dir: Path, start_epoch: int) -> None:
        self.session_start = (start_epoch, time.monotonic())

    def on_epoch_start(self, epoch: int, total_steps: int) -> None:
        total = "?" if self.max_epochs >= 1_000_000 else self.max_epochs
        self.bar = bar(total_steps, f"epoch {epoch + 1}/{total}", "step", self.show_bar, self.stream)

    def on_step_end(self, step: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}")

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        self.close()
        parts = [f"epoch {epoch}", f"loss {logs.get('train_loss', float('nan')):.4f}", f"lr {logs['lr']:.2e}"]
        for key, label in (("val_dice_mean", "val dice"), ("val_accuracy", "val acc"), ("val_auc", "val auc")):
            if logs.get(key) is not None:
                parts.append(f"{label} {logs[key]:.4f}")
        elapsed = logs["seconds"]
        parts.append(f"elapsed {format_seconds(elapsed)}, remaining "
                     f"{format_seconds(self.remaining(epoch, elapsed))}")
        log.info(" | ".join(parts))

    def remaining(self, epoch: int, elapsed: float) -> float | None:
        """What is left of the time budget, else this session's time per epoch times the epochs left."""
        if self.budget_seconds is not None:
            return max(self.budget_seconds - elapsed, 0.0)
        if self.session_start is None or epoch <= self.session_start[0]:
            return None
        first_epoch, t0 = self.session_start
        per_epoch = (time.monotonic() - t0) / (epoch - first_epoch)
        return per_epoch * max(self.max_epochs - epoch, 0)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EarlyStopping:
    """Tracks the best validation metric (higher is better) and says when to stop.

    Args:
        patience: validations without improvement before stopping; None never stops.
        min_delta: improvement smaller than this does not count.
    """

    def __init__(self, patience: int | None = None, min_delta: float = 0.0) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.best = -math.inf
        self.best_epoch = 0
        self.bad = 0

    def update(self, metric: float, epoch: int) -> bool:
        """Record a validation result; True when it is a new best."""
        if not math.isnan(metric) and metric > self.best + self.min_delta:
            self.best, self.best_epoch, self.bad = float(metric), int(epoch), 0
            return True
        self.bad += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad": self.bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.bad = int(state["bad"])
