"""What a training task is to the :class:`~medzoo.engine.trainer.Trainer`: where batches come from, how a
network's output is scored against its target, and how a validation is run and summed up in one number.

The trainer owns everything the tasks share (run folder, resume, checkpoints, callbacks, DDP, time budget,
precision, the optimizer step); a task owns only what differs. Two tasks exist:
:class:`~medzoo.engine.segment.SegmentationTask` (patches, Dice+CE, sliding-window Dice) and
:class:`~medzoo.engine.classify.ClassificationTask` (whole resized volumes, cross-entropy, accuracy and AUC).

Plugging in more: a region task (BraTS-style overlapping regions, one sigmoid output per region, BCE+Dice)
subclasses ``SegmentationTask`` and overrides :meth:`Task.loss` (region targets built from the label map,
``medzoo.losses``' BCE+Dice) and :meth:`Task.validate` (each region thresholded at 0.5, Dice per region; the
logs keep the ``val_dice_<name>`` keys so metrics.csv needs no new format). An ignore label is handled in the
same two places: ``loss`` masks its voxels out, ``validate`` leaves them out of the Dice sums. Neither needs a
change to the trainer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medzoo.engine import distributed
from medzoo.engine.budget import Budget
from medzoo.engine.config import TrainConfig
from medzoo.planning.plan import Plan


@dataclass
class Validation:
    """One validation: the figures for metrics.csv (``logs``), the number that picks the best checkpoint and
    drives early stopping and the plateau schedule (``metric``, higher is better), and optionally an
    (image, prediction) pair for an overlay picture."""

    logs: dict[str, float]
    metric: float
    example: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)


class Task:
    """Base class of the training tasks; the trainer calls these in this order:

    ``prepare`` once (plan + data), then per epoch ``batches`` and per batch ``loss``, ``validate`` when a
    validation is due. ``calibrate``, ``estimate_validation`` and ``choose_augment`` help the time budget; ``after_training``
    runs once at the end.

    Attributes:
        metric_columns: metrics.csv columns between ``lr`` and ``seconds``.
        accelerated: whether the run's precision, memory format and compile settings apply (False: fp32,
            contiguous, eager).
        tta_factor: forward passes per input of a final validation with mirroring (1: no mirroring).
        legacy_augment: the augmentation of a resumed checkpoint written before the setting was stored.
    """

    metric_columns: list[str] = []
    accelerated: bool = True
    tta_factor: int = 1
    legacy_augment: str | None = None

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.device = torch.device("cpu")
        self.dist = distributed.DistInfo()

    def prepare(self, run_dir: Path, resume: bool, dist_info: distributed.DistInfo, device: torch.device) -> Plan:
        """Make (or, on resume, reload) the plan and splits in ``run_dir`` and load this rank's data."""
        raise NotImplementedError

    def batches(self, seed: int, augment: str | None) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's (input, target) batches of one epoch, drawn from ``seed``; the trainer takes
        ``iterations_per_epoch`` of them and calls ``close()`` on the iterable if it has one."""
        raise NotImplementedError

    def loss(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        """The scalar training loss of the network's ``output`` (computed in fp32) against ``target``."""
        raise NotImplementedError

    def validate(self, model: nn.Module, mirror: bool, keep_example: bool) -> Validation:
        """Score ``model`` on this rank's validation data (all-reduced across ranks)."""
        raise NotImplementedError

    def calibrate(self, budget: Budget, model: nn.Module, optimizer: torch.optim.Optimizer) -> bool:
        """Fill ``budget``'s first estimates before any step; True when they come from a probe."""
        return False

    def estimate_validation(self, budget: Budget) -> None:
        """Refine ``budget``'s validation estimate from its measured step time (no probe, no validation yet)."""

    def choose_augment(self, budget: Budget, probed: bool) -> str | None:
        """The augmentation of a new run (stored in its checkpoints and kept across a resume)."""
        return None

    def after_training(self, budget: Budget) -> None:
        """Called once on the main rank when the loop has ended (e.g. to tell the planner what a step cost)."""
