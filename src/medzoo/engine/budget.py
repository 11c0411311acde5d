"""The wall-clock budget of a training run.

:class:`Budget` says whether another step still leaves time for the final validation. Before the first step
its estimates come from :func:`calibrate_budget` (a timed forward pass of the real network, so a step or a
validation that cannot fit is never started), then from the measured steps, validations and checkpoint
writes. The ``*_due`` / ``*_fits`` helpers take a decision every DDP rank agrees on.
"""

from __future__ import annotations

import logging
import math
import time

import torch
from torch import nn

from medzoo.engine import distributed
from medzoo.planning.plan import Plan

log = logging.getLogger(__name__)


class Budget:
    """Wall-clock budget: says whether another step still leaves time for the final validation.

    Before the first step the costs come from :func:`calibrate_budget` (a timed forward pass of the real
    network, so a network whose single step or validation outlasts the budget is never started); then from the
    measured steps, validations and checkpoint writes.
    """

    val_estimate = 2.0  # replaced by the probe's estimate, then the step-based one, then the measured validation
    finish_seconds = 2.0
    tta_factor = 1  # forward passes per window of the final validation with mirroring (2 ** spatial dims)
    tta_fraction = 0.2  # mirroring in the final validation only while it costs at most this share of the budget
    margin_fraction = (0.02, 0.05)  # safety margin: 2 % of the budget but at least 10 s, and never over 5 %
    margin_floor = 10.0

    def __init__(self, seconds: float | None, start: float) -> None:
        self.seconds = seconds
        self.start = start
        self.step_time = 0.0  # running estimate of one training step (measured)
        self.step_estimate = 0.0  # used until a step is measured (from the forward probe)
        self.val_time: float | None = None  # last measured validation
        self.save_time = 0.0  # one checkpoint write (estimated from the state size, then measured)
        self.val_total = 0.0  # seconds spent validating so far

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def progress(self) -> float:
        """Fraction of the training part of the budget used (for schedules)."""
        if self.seconds is None:
            return 0.0
        usable = max(self.seconds - self.reserve(), 1e-6)
        return min(self.elapsed() / usable, 1.0)

    def validation_seconds(self) -> float:
        """The measured validation time, else the estimate: the probe's, corrected by how far off its step
        estimate turned out (a probe timed while the machine was busy overestimates both alike)."""
        if self.val_time is not None:
            return self.val_time
        if self.step_time > 0 and self.step_estimate > 0:
            return self.val_estimate * self.step_time / self.step_estimate
        return self.val_estimate

    def reserve(self) -> float:
        """Time kept for the final validation and the wrap-up (best + last checkpoint, curves), with a margin."""
        return (1.25 * self.validation_seconds() * self.final_factor() + 2 * self.save_time + self.finish_seconds
                + self.margin())

    def margin(self) -> float:
        """Safety margin for timing noise: 2 % of the budget, at least 10 s, at most 5 % (30 min: 36 s)."""
        low, high = self.margin_fraction
        seconds = self.seconds or 0.0
        return min(high * seconds, max(low * seconds, self.margin_floor))

    def final_factor(self) -> int:
        """Cost of the final validation relative to a plain one: ``tta_factor`` when it fits, else 1."""
        if self.tta_factor <= 1:
            return 1
        if self.seconds is not None and self.tta_factor * self.validation_seconds() > self.tta_fraction * self.seconds:
            return 1
        return self.tta_factor

    def record_step(self, seconds: float) -> None:
        self.step_time = seconds if self.step_time == 0 else 0.8 * self.step_time + 0.2 * seconds

    def next_step(self) -> float:
        """Expected duration of the next training step."""
        return self.step_time if self.step_time > 0 else self.step_estimate

    def exhausted(self) -> bool:
        if self.seconds is None:
            return False
        return self.elapsed() + self.next_step() + self.reserve() > self.seconds

    def can_validate(self, factor: int = 1) -> bool:
        """Whether a validation (``factor`` times a plain one) and the checkpoint after it are expected to end
        within the budget."""
        if self.seconds is None:
            return True
        return self.elapsed() + factor * self.validation_seconds() + self.save_time <= self.seconds


def _count_windows(plan: Plan, cases: list, overlap: float) -> int:
    """Sliding-window forward passes of one validation over ``cases`` (2D: per slice)."""
    from medzoo.inference.sliding_window import window_starts

    total = 0
    for case in cases:
        shape = tuple(case.image.shape[1:])
        n_slices = 1
        if plan.spatial_dims == 2:
            n_slices = shape[plan.slice_axis]
            shape = tuple(s for a, s in enumerate(shape) if a != plan.slice_axis)
        total += n_slices * math.prod(len(window_starts(s, p, overlap)) for s, p in zip(shape, plan.patch_size))
    return total


def estimate_validation_seconds(seconds_per_voxel: float, plan: Plan, cases: list, overlap: float,
                                windows: int | None = None) -> float:
    """Sliding-window cost estimate: windows x voxels per window x forward seconds per voxel (``windows``:
    the count from :func:`_count_windows`, when already known)."""
    if windows is None:
        windows = _count_windows(plan, cases, overlap)
    return windows * math.prod(plan.patch_size) * seconds_per_voxel


def _probe_size(model: nn.Module, plan: Plan, fraction: float) -> tuple[int, ...]:
    """About ``fraction`` of the patch per axis, rounded up to a size the network takes (at least 4 and two
    size-divisor steps, never above the patch)."""
    from medzoo.models.registry import get_card

    card = get_card(plan.model)
    divisor = max(int(getattr(model, "size_divisor", card.size_divisor) or 1), card.size_divisor, 1)
    out = []
    for p in plan.patch_size:
        s = max(int(p * fraction), card.min_size, 2 * divisor, 4)
        s = int(math.ceil(s / divisor) * divisor)
        out.append(min(s, p))
    return tuple(out)


def _time_forward(model: nn.Module, x: torch.Tensor, repeats: int) -> float:
    seconds = math.inf
    for _ in range(repeats):
        t0 = time.monotonic()
        model(x)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        seconds = min(seconds, time.monotonic() - t0)
        if seconds > 0.5:
            break
    return seconds


@torch.no_grad()
def probe_forward_seconds(model: nn.Module, plan: Plan, device: torch.device, max_probe_seconds: float = 1.0
                          ) -> float:
    """Seconds of one eval-mode forward pass of one patch (batch 1), measured on the patch itself when that
    is affordable, else scaled from the largest input that is.

    After an untimed warm-up on the smallest input the network takes, it runs on zeros of a quarter, half and
    the whole patch per axis (each twice when fast; the quicker counts), but only while the next run, scaled
    linearly by voxels from the last one, should take at most ``max_probe_seconds``. The last timing is scaled
    linearly by voxels to the patch (an over-estimate where the fixed per-layer overhead still dominates).
    No random number is drawn and no weight or statistic changes.
    """
    was_training = model.training
    model.eval()
    try:
        smallest = torch.zeros(1, plan.in_channels, *_probe_size(model, plan, 0.0), device=device)
        model(smallest)  # warm-up, not timed
        voxels, seconds = smallest[0, 0].numel(), _time_forward(model, smallest, 2)
        for fraction in (0.25, 0.5, 1.0):
            size = _probe_size(model, plan, fraction)
            v = math.prod(size)
            if v <= voxels:
                continue
            if seconds * v / voxels > max_probe_seconds:
                break
            voxels, seconds = v, _time_forward(model, torch.zeros(1, plan.in_channels, *size, device=device), 2)
    finally:
        model.train(was_training)
    return seconds * math.prod(plan.patch_size) / voxels


def _state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Approximate checkpoint size: weights, buffers and the optimizer's per-parameter slots."""
    slots = {"Adam": 2, "AdamW": 2, "SGD": 1, "RMSprop": 2}.get(type(optimizer).__name__, 2)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return params * (1 + slots) + buffers


def calibrate_budget(budget: Budget, model: nn.Module, optimizer: torch.optim.Optimizer, plan: Plan,
                     val_cases: list, device: torch.device, overlap: float) -> float | None:
    """Fill the budget's first estimates (step, validation, checkpoint write) before any step is taken.

    From :func:`probe_forward_seconds` (allowed a quarter of the time left, at least 1 s): a training step as
    2.5 forward passes per sample (forward + backward), a validation as one forward pass per sliding window,
    a checkpoint write at 150 MB/s. Returns the window's forward seconds (None when the network could not be
    probed; the estimates then stay as they were and the measured steps take over).
    """
    budget.save_time = max(budget.save_time, _state_bytes(model, optimizer) / 150e6)
    left = (budget.seconds - budget.elapsed()) if budget.seconds is not None else 4.0
    try:
        window = probe_forward_seconds(model, plan, device, max_probe_seconds=max(0.25 * left, 1.0))
    except Exception as err:  # noqa: BLE001 - a failed probe must not stop training; measured times follow
        log.debug("could not probe %s's forward cost: %s", plan.model, err)
        return None
    windows = _count_windows(plan, val_cases, overlap)
    budget.step_estimate = 2.5 * plan.batch_size * window
    budget.val_estimate = estimate_validation_seconds(window / math.prod(plan.patch_size), plan, val_cases, overlap,
                                                      windows)
    log.info("time budget: one step ~%.2fs, validation ~%.1fs (%d windows), checkpoint ~%.1fs (estimates)",
             budget.step_estimate, budget.val_estimate, windows, budget.save_time)
    return window


def stop_now(budget: Budget, dist_info: distributed.DistInfo, device: torch.device) -> bool:
    """Budget check, agreed across ranks (any rank out of time stops them all)."""
    if budget.seconds is None:
        return False
    return distributed.any_rank(budget.exhausted(), dist_info, device)


def validation_due(budget: Budget, fraction: float | None, dist_info: distributed.DistInfo,
                   device: torch.device) -> bool:
    """Under a time budget, whether an intermediate validation keeps validating within ``fraction`` of the
    time spent so far (agreed across ranks). Networks whose validation is slow then validate less often
    instead of eating the training time; the final validation always runs."""
    if budget.seconds is None or not fraction:
        return True
    over = budget.val_total + budget.validation_seconds() > fraction * budget.elapsed()
    return not distributed.any_rank(over, dist_info, device)


def final_validation_factor(budget: Budget, dist_info: distributed.DistInfo, device: torch.device) -> int:
    """The final validation's cost factor: ``tta_factor`` (mirroring) when it fits on every rank, else 1."""
    factor = budget.final_factor()
    fits = factor > 1 and budget.can_validate(factor)
    return budget.tta_factor if not distributed.any_rank(not fits, dist_info, device) else 1


def validation_fits(budget: Budget, dist_info: distributed.DistInfo, device: torch.device, factor: int = 1) -> bool:
    """Whether a validation (``factor`` times a plain one) still fits in the budget, agreed across ranks."""
    if budget.seconds is None:
        return True
    return not distributed.any_rank(not budget.can_validate(factor), dist_info, device)
