"""Learning-rate schedules as small stateful objects: ``lr = base_lr * schedule.factor(epoch, progress)``.

``progress`` is the fraction of training done (epochs done / epochs, or elapsed / time budget), so the same
schedule works for a fixed epoch count and for a wall-clock budget. The trainer sets the learning rate at
the start of every epoch; :meth:`Schedule.state_dict` goes into checkpoints (only "plateau" has state).
"""

from __future__ import annotations

import math
from typing import Any

from medzoo.errors import ConfigError


class Schedule:
    """Constant learning rate; the base class of the others."""

    def factor(self, epoch: int, progress: float) -> float:
        """Multiplier of the base learning rate for ``epoch`` (0-based) at ``progress`` in [0, 1]."""
        return 1.0

    def observe(self, metric: float) -> None:
        """Report a validation metric (higher is better); only "plateau" uses it."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class PolySchedule(Schedule):
    """nnU-Net's polynomial decay: ``(1 - progress) ** power``."""

    def __init__(self, power: float = 0.9, warmup_epochs: int = 0) -> None:
        self.power = power
        self.warmup_epochs = warmup_epochs

    def factor(self, epoch: int, progress: float) -> float:
        if epoch < self.warmup_epochs:
            return (epoch + 1) / (self.warmup_epochs + 1)
        return max(0.0, 1.0 - min(max(progress, 0.0), 1.0)) ** self.power


class CosineSchedule(Schedule):
    """Linear warm-up over ``warmup_epochs`` then cosine decay from 1 to ``min_factor``."""

    def __init__(self, warmup_epochs: int = 0, min_factor: float = 0.0) -> None:
        self.warmup_epochs = warmup_epochs
        self.min_factor = min_factor

    def factor(self, epoch: int, progress: float) -> float:
        if epoch < self.warmup_epochs:
            return (epoch + 1) / (self.warmup_epochs + 1)
        p = min(max(progress, 0.0), 1.0)
        return self.min_factor + (1.0 - self.min_factor) * 0.5 * (1.0 + math.cos(math.pi * p))


class StepSchedule(Schedule):
    """Multiply by ``gamma`` every ``step_size`` epochs."""

    def __init__(self, step_size: int = 30, gamma: float = 0.1, warmup_epochs: int = 0) -> None:
        if step_size < 1:
            raise ConfigError(f"step_size must be >= 1, got {step_size}")
        self.step_size = step_size
        self.gamma = gamma
        self.warmup_epochs = warmup_epochs

    def factor(self, epoch: int, progress: float) -> float:
        if epoch < self.warmup_epochs:
            return (epoch + 1) / (self.warmup_epochs + 1)
        return self.gamma ** (epoch // self.step_size)


class PlateauSchedule(Schedule):
    """Multiply by ``gamma`` when the validation metric has not improved for ``patience`` observations."""

    def __init__(self, patience: int = 5, gamma: float = 0.1, min_factor: float = 1e-3) -> None:
        self.patience = patience
        self.gamma = gamma
        self.min_factor = min_factor
        self.current = 1.0
        self.best = -math.inf
        self.bad = 0

    def factor(self, epoch: int, progress: float) -> float:
        return self.current

    def observe(self, metric: float) -> None:
        if metric > self.best:
            self.best, self.bad = metric, 0
            return
        self.bad += 1
        if self.bad >= self.patience:
            self.current = max(self.current * self.gamma, self.min_factor)
            self.bad = 0

    def state_dict(self) -> dict[str, Any]:
        return {"current": self.current, "best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.current = float(state["current"])
        self.best = float(state["best"])
        self.bad = int(state["bad"])


def create_schedule(
    name: str,
    *,
    warmup_epochs: int = 0,
    step_size: int = 30,
    gamma: float = 0.1,
    plateau_patience: int = 5,
    power: float = 0.9,
) -> Schedule:
    """Build a schedule by name: "poly", "cosine", "step", "plateau" or "constant"."""
    builders = {
        "constant": lambda: Schedule(),
        "poly": lambda: PolySchedule(power=power, warmup_epochs=warmup_epochs),
        "cosine": lambda: CosineSchedule(warmup_epochs=warmup_epochs),
        "step": lambda: StepSchedule(step_size=step_size, gamma=gamma, warmup_epochs=warmup_epochs),
        "plateau": lambda: PlateauSchedule(patience=plateau_patience, gamma=gamma),
    }
    if name not in builders:
        raise ConfigError(f"unknown schedule '{name}' (choose from {', '.join(builders)})")
    return builders[name]()
