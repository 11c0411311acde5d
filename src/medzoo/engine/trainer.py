"""Training: one readable loop with callbacks.

:func:`train` prepares a run folder (plan, splits, preprocessed cache), builds the network, optimizer,
schedule and loss, then runs::

    for each epoch:
        re-seed every generator from (seed, epoch, rank); set the learning rate from the schedule
        train `iterations_per_epoch` steps on patches from this rank's training cases
        every `val_every` epochs: sliding-window validation -> best checkpoint, early stopping
        write checkpoint_last.pt, metrics.csv, TensorBoard

A wall-clock ``time_budget`` stops training early enough to leave time for the final validation. Under
``torchrun`` the same code runs one process per device (DDP); only rank 0 writes files.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medzoo.engine import distributed
from medzoo.engine.callbacks import CallbackList, CSVLogger, EarlyStopping, ProgressBar, TensorBoardLogger
from medzoo.engine.checkpoint import build_model, load_checkpoint, save_checkpoint
from medzoo.engine.config import TrainConfig
from medzoo.engine.rng import capture_rng, restore_rng, seed_epoch, seed_everything, set_determinism
from medzoo.engine.schedules import Schedule, create_schedule
from medzoo.engine.splits import load_splits, make_splits, save_splits
from medzoo.engine.validation import ValidationResult, validate
from medzoo.errors import CheckpointError, ConfigError, DataError
from medzoo.planning.plan import Plan

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a finished run reports.

    Attributes:
        run_dir: the run folder.
        epochs: epochs completed.
        steps: optimizer steps taken.
        best_metric: best validation mean foreground Dice (or accuracy for classification).
        best_epoch: epoch of the best checkpoint.
        final_metrics: the last validation's figures.
        seconds: wall-clock time of :func:`train`.
        stop_reason: "epochs", "time_budget" or "early_stopping".
    """

    run_dir: Path
    epochs: int
    steps: int
    best_metric: float
    best_epoch: int
    final_metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    stop_reason: str = "epochs"


# ----------------------------------------------------------------------------------------------- setup


def build_optimizer(config: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer named by ``config.optimizer`` over ``params``."""
    lr, wd = config.learning_rate, config.weight_decay
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=wd, nesterov=True)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    return torch.optim.RMSprop(params, lr=lr, weight_decay=wd, momentum=min(config.momentum, 0.9))


def amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: None (fp32) on CPU or with amp "none"; bf16 / fp16 on CUDA."""
    if device.type != "cuda" or config.amp == "none":
        return None
    if config.amp == "fp16" or (config.amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def apply_transfer(model: nn.Module, config: TrainConfig) -> None:
    """``init_from``: copy matching weights from a checkpoint; ``freeze``: stop gradients by prefix."""
    if config.init_from:
        from medzoo.models.transfer import load_matching_weights

        ckpt = load_checkpoint(config.init_from)
        report = load_matching_weights(model, ckpt["model"])
        log.info("initialised from %s: %s", config.init_from, report)
    if config.freeze:
        from medzoo.models.transfer import freeze

        freeze(model, list(config.freeze))


def _plan_for(config: TrainConfig, info: Any) -> Plan:
    from medzoo.planning.planner import make_plan

    fingerprint = None
    try:
        from medzoo.planning.fingerprint import compute_fingerprint

        fingerprint = compute_fingerprint(info)
    except ImportError:
        log.debug("no fingerprint module; the planner reads the geometry itself")
    overrides = dict(config.plan_overrides)
    overrides.update(model=config.model, patch_size=config.patch_size, batch_size=config.batch_size,
                     spatial_dims=config.spatial_dims)
    if config.model_kwargs:
        overrides["model_kwargs"] = dict(config.model_kwargs)
    if config.context_slices:
        overrides["context_slices"] = config.context_slices
    return make_plan(info, fingerprint, **overrides)


@dataclass
class _Data:
    plan: Plan
    train_cases: list
    val_cases: list


def _prepare_data(config: TrainConfig, run_dir: Path, resume: bool, info_dist: distributed.DistInfo) -> _Data:
    """Plan (or reload it), split, cache the preprocessed cases; rank 0 writes, the others wait and read."""
    from medzoo.data.cache import build_cache
    from medzoo.data.layouts import load_dataset

    info = load_dataset(config.data, layout=config.layout)
    if resume:
        plan = Plan.load(run_dir / "plan.json")
        splits = load_splits(run_dir / "splits.json")
    else:
        if info_dist.is_main:
            plan = _plan_for(config, info)
            plan.save(run_dir / "plan.json")
            ids = [c.case_id for c in info.cases]
            splits = make_splits(ids, folds=config.folds, seed=config.seed)
            save_splits(splits, run_dir / "splits.json", seed=config.seed, fold=config.fold)
        distributed.barrier()
        plan = Plan.load(run_dir / "plan.json")
        splits = load_splits(run_dir / "splits.json")
    split = splits[config.fold if config.folds > 1 else 0]
    cache_dir = Path(config.cache_dir) if config.cache_dir else run_dir / "cache"
    by_id = {c.case_id: c for c in info.cases}
    missing = [i for i in split["train"] + split["val"] if i not in by_id]
    if missing:
        raise DataError(f"{config.data}: cases {missing[:5]} of splits.json are not in the dataset")
    wanted = split["train"] + split["val"]
    if info_dist.is_main:
        cached = build_cache(info, plan, cache_dir, cases=wanted, progress=config.progress)
    distributed.barrier()
    if not info_dist.is_main:
        cached = build_cache(info, plan, cache_dir, cases=wanted, progress=False)  # reads rank 0's files
    cached_by_id = {c.case_id: c for c in cached}
    train_cases = [cached_by_id[i] for i in split["train"]]
    val_cases = [cached_by_id[i] for i in split["val"]]
    if config.max_val_cases is not None:
        val_cases = val_cases[: config.max_val_cases]
    return _Data(plan, train_cases, val_cases)


def _make_loader(plan: Plan, cases: list, config: TrainConfig, seed: int):
    from medzoo.data.loader import PatchLoader

    return PatchLoader(
        cases, plan.patch_size, plan.batch_size, spatial_dims=plan.spatial_dims, seed=seed,
        num_workers=config.num_workers, slice_axis=plan.slice_axis, context_slices=plan.context_slices,
    )


# -------------------------------------------------------------------------------------------- the clock


class Budget:
    """Wall-clock budget: says whether another step still leaves time for the final validation.

    Before the first step the costs come from :func:`probe_costs` (a timed forward pass of the real network,
    so a network whose single step or validation outlasts the budget is never started); then from the
    measured steps, validations and checkpoint writes.
    """

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
        """The measured validation time, else the estimate."""
        return self.val_time if self.val_time is not None else self.val_estimate

    def reserve(self) -> float:
        """Time kept for the final validation and the wrap-up (best + last checkpoint, curves), with a margin."""
        return 1.25 * self.validation_seconds() * self.final_factor() + 2 * self.save_time + self.finish_seconds + (
            0.05 * (self.seconds or 0.0))

    tta_factor = 1  # forward passes per window of the final validation with mirroring (2 ** spatial dims)
    tta_fraction = 0.2  # mirroring in the final validation only while it costs at most this share of the budget

    def final_factor(self) -> int:
        """Cost of the final validation relative to a plain one: ``tta_factor`` when it fits, else 1."""
        if self.tta_factor <= 1:
            return 1
        if self.seconds is not None and self.tta_factor * self.validation_seconds() > self.tta_fraction * self.seconds:
            return 1
        return self.tta_factor

    val_estimate = 2.0  # replaced by the probe's estimate, then the step-based one, then the measured validation
    finish_seconds = 2.0

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


def _estimate_val_seconds(seconds_per_voxel: float, plan: Plan, cases: list, overlap: float) -> float:
    """Sliding-window cost estimate: windows x voxels per window x forward seconds per voxel."""
    return _count_windows(plan, cases, overlap) * math.prod(plan.patch_size) * seconds_per_voxel


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
    budget.step_estimate = 2.5 * plan.batch_size * window
    budget.val_estimate = _estimate_val_seconds(window / math.prod(plan.patch_size), plan, val_cases, overlap)
    log.info("time budget: one step ~%.2fs, validation ~%.1fs (%d windows), checkpoint ~%.1fs (estimates)",
             budget.step_estimate, budget.val_estimate, _count_windows(plan, val_cases, overlap),
             budget.save_time)
    return window


# --------------------------------------------------------------------------------------------- the loop


@dataclass
class _State:
    epoch: int = 0  # epochs completed
    step: int = 0
    elapsed: float = 0.0  # training seconds of earlier (resumed) sessions


def _checkpoint_state(model, optimizer, scaler, schedule, stopper, state, plan, config) -> dict[str, Any]:
    return {
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler.is_enabled() else {},
        "scheduler": schedule.state_dict(),
        "early_stopping": stopper.state_dict(),
        "epoch": state.epoch,
        "step": state.step,
        "elapsed": state.elapsed,
        "best_metric": stopper.best,
        "plan": plan.to_dict(),
        "model_name": plan.model,
        "config": config.to_dict(),
        "rng": capture_rng(),
    }


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _validation_logs(result: ValidationResult, plan: Plan) -> dict[str, float]:
    logs = {"val_dice_mean": result.mean_foreground_dice}
    for k, name in plan.foreground_labels.items():
        logs[f"val_dice_{name}"] = float(result.dice_per_class[k])
    return logs


def train(config: TrainConfig, *, resume: bool = False) -> TrainResult:
    """Train a network as ``config`` says; the run folder ``config.out`` gets everything to predict/resume.

    Args:
        config: the run's settings.
        resume: continue the run in ``config.out`` from its ``checkpoint_last.pt`` (exactly, in
            deterministic mode on CPU: same batches, same weights as an uninterrupted run).

    Returns:
        A :class:`TrainResult`.
    """
    start = time.monotonic()
    dist_info = distributed.env_info()
    device = distributed.resolve_device(config.device, dist_info)
    distributed.setup(device, dist_info)
    try:
        if config.task == "classify":
            from medzoo.engine.classify import train_classifier

            return train_classifier(config, resume=resume, device=device, dist_info=dist_info, start=start)
        return _train_segmentation(config, resume, device, dist_info, start)
    finally:
        distributed.cleanup()


def prepare_run_dir(config: TrainConfig, resume: bool, is_main: bool) -> Path:
    """Create (or check, on resume) the run folder and write ``config.json``."""
    run_dir = Path(config.out)
    if resume:
        if not (run_dir / "checkpoint_last.pt").is_file():
            raise CheckpointError(f"{run_dir}: nothing to resume (no checkpoint_last.pt)")
    elif (run_dir / "checkpoint_last.pt").exists() or (run_dir / "config.json").exists():
        raise ConfigError(f"{run_dir}: a run already exists there; use --resume {run_dir} or another --out")
    if config.data is None:
        raise ConfigError("no dataset given (--data)")
    distributed.barrier()  # every rank has checked the folder before rank 0 writes into it
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save(run_dir / "config.json")
    distributed.barrier()
    return run_dir


def _train_segmentation(
    config: TrainConfig, resume: bool, device: torch.device, dist_info: distributed.DistInfo, start: float
) -> TrainResult:
    from medzoo.losses import DeepSupervisionLoss, create_loss

    run_dir = prepare_run_dir(config, resume, dist_info.is_main)
    set_determinism(config.deterministic, device)
    seed_everything(config.seed)
    data = _prepare_data(config, run_dir, resume, dist_info)
    plan = data.plan
    train_cases = distributed.shard(data.train_cases, dist_info)
    val_cases = distributed.shard(data.val_cases, dist_info)

    seed_everything(config.seed)  # same initial weights on every rank and every run
    model = build_model(plan).to(device)
    if not resume:
        apply_transfer(model, config)
    elif config.freeze:
        from medzoo.models.transfer import freeze

        freeze(model, list(config.freeze))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(config, params)
    schedule: Schedule = create_schedule(
        config.schedule, warmup_epochs=config.warmup_epochs, step_size=config.step_size, gamma=config.gamma,
        plateau_patience=config.plateau_patience,
    )
    stopper = EarlyStopping(config.patience)
    dtype = amp_dtype(config, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    loss_fn = create_loss(config.loss)
    deep_loss_fn = DeepSupervisionLoss(loss_fn)  # used when the network returns a list in train mode
    state = _State()

    if resume:
        ckpt = load_checkpoint(run_dir / "checkpoint_last.pt", map_location=device)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        schedule.load_state_dict(ckpt["scheduler"])
        stopper.load_state_dict(ckpt["early_stopping"])
        state = _State(int(ckpt["epoch"]), int(ckpt["step"]), float(ckpt.get("elapsed", 0.0)))
        restore_rng(ckpt["rng"])
        log.info("resuming %s after epoch %d (step %d)", run_dir, state.epoch, state.step)

    train_model: nn.Module = model
    if dist_info.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    callbacks = CallbackList([])
    if dist_info.is_main:
        columns = ["val_dice_mean"] + [f"val_dice_{n}" for n in plan.foreground_labels.values()]
        callbacks = CallbackList([CSVLogger(run_dir / "metrics.csv", columns),
                                  TensorBoardLogger(run_dir / "tensorboard")])
        callbacks.callbacks.append(ProgressBar(config.max_epochs, config.budget_seconds, config.progress))
    callbacks.on_train_start(run_dir, state.epoch)

    budget = Budget(config.budget_seconds, start - state.elapsed)
    probed = budget.seconds is not None and calibrate_budget(
        budget, model, optimizer, plan, val_cases, device, config.val_overlap) is not None
    if config.final_tta:
        budget.tta_factor = 2**plan.spatial_dims
    stop_reason = "epochs"
    last_val: dict[str, float] = {}
    steps_since_val = 0
    base_lr = config.learning_rate

    def run_validation(epoch: int, factor: int = 1) -> dict[str, float]:
        """Validate; ``factor`` > 1 mirrors every spatial axis of the network's input (the final validation)."""
        t0 = time.monotonic()
        mirror = tuple(range(plan.spatial_dims)) if factor > 1 else None
        if mirror:
            log.info("final validation with mirroring test-time augmentation (as `medzoo predict --tta`)")
        result = validate(model, val_cases, plan, device, overlap=config.val_overlap,
                          keep_example=config.log_images and dist_info.is_main, mirror_axes=mirror)
        seconds = time.monotonic() - t0
        budget.val_time = seconds / factor
        budget.val_total += seconds
        logs = _validation_logs(result, plan)
        schedule.observe(result.mean_foreground_dice)
        if stopper.update(result.mean_foreground_dice, epoch) and dist_info.is_main:
            save_checkpoint(run_dir / "checkpoint_best.pt",
                            _checkpoint_state(model, optimizer, scaler, schedule, stopper, state, plan, config))
        if result.example is not None:
            _log_overlay(callbacks, epoch, *result.example)
        return logs

    try:
        for epoch in range(state.epoch, config.max_epochs):
            if budget.exhausted():
                stop_reason = "time_budget"
                break
            progress = budget.progress() if config.epochs is None else epoch / config.max_epochs
            lr = base_lr * schedule.factor(epoch, progress)
            _set_lr(optimizer, lr)
            loader = _make_loader(plan, train_cases, config, seed_epoch(config.seed, epoch, dist_info.rank))
            callbacks.on_epoch_start(epoch, config.iterations_per_epoch)
            train_model.train()
            losses = []
            try:
                batches = iter(loader)
                for _ in range(config.iterations_per_epoch):
                    if _stop_now(budget, dist_info, device):
                        stop_reason = "time_budget"
                        break
                    t0 = time.monotonic()
                    image, label = next(batches)
                    loss = _train_step(train_model, model, image.to(device), label.to(device),
                                       (loss_fn, deep_loss_fn), optimizer, scaler, dtype, config.grad_clip)
                    losses.append(loss)
                    state.step += 1
                    steps_since_val += 1
                    budget.record_step(time.monotonic() - t0)
                    if budget.val_time is None and budget.seconds is not None and not probed:
                        # A step is about 2.5 forward passes of its batch: cost a validation window from it.
                        per_voxel = budget.step_time / 2.5 / (plan.batch_size * math.prod(plan.patch_size))
                        budget.val_estimate = _estimate_val_seconds(per_voxel, plan, val_cases,
                                                                    config.val_overlap)
                    callbacks.on_step_end(state.step, loss)
            finally:
                if hasattr(loader, "close"):
                    loader.close()
            mean_loss = _mean_across_ranks(losses, device)
            state.epoch = epoch + 1
            state.elapsed = budget.elapsed()
            logs: dict[str, Any] = {"epoch": state.epoch, "train_loss": mean_loss, "lr": lr}
            last_epoch = state.epoch == config.max_epochs or stop_reason == "time_budget"
            due = last_epoch or (state.epoch % config.val_every == 0
                                 and _validation_due(budget, config.val_time_fraction, dist_info, device))
            factor = _final_factor(budget, dist_info, device) if last_epoch else 1
            if due and _validation_fits(budget, dist_info, device, factor):
                last_val = run_validation(state.epoch, factor)
                logs.update(last_val)
                steps_since_val = 0
            logs["seconds"] = budget.elapsed()
            state.elapsed = budget.elapsed()
            if dist_info.is_main and (state.epoch % config.checkpoint_every == 0 or last_epoch):
                t0 = time.monotonic()
                save_checkpoint(run_dir / "checkpoint_last.pt",
                                _checkpoint_state(model, optimizer, scaler, schedule, stopper, state, plan, config))
                budget.save_time = time.monotonic() - t0
            callbacks.on_epoch_end(state.epoch, logs)
            if stopper.should_stop:
                stop_reason = "early_stopping"
                break
            if stop_reason == "time_budget":
                break
        if state.step == 0 and stop_reason == "time_budget":
            log.warning(
                "time budget of %.0fs left no time for one training step of %s (patch %s, batch %d): a step "
                "takes about %.1fs, validation about %.1fs; give a longer --time-budget or a smaller --patch-size "
                "/ --batch-size", budget.seconds, plan.model, "x".join(map(str, plan.patch_size)),
                plan.batch_size, budget.next_step(), budget.validation_seconds())
        if steps_since_val > 0 or not last_val:  # the loop ended without validating the final weights
            factor = _final_factor(budget, dist_info, device)
            validated = _validation_fits(budget, dist_info, device, factor)
            if validated:
                last_val = run_validation(state.epoch, factor)
            else:
                log.warning("time budget: no time left for the final validation (about %.1fs); the run has no "
                            "validation score for its last weights", budget.validation_seconds())
            if dist_info.is_main and (validated or not (run_dir / "checkpoint_last.pt").exists()):
                save_checkpoint(run_dir / "checkpoint_last.pt",
                                _checkpoint_state(model, optimizer, scaler, schedule, stopper, state, plan, config))
        final = {"epoch": state.epoch, **last_val, "seconds": budget.elapsed()}
        callbacks.on_train_end(final)
    finally:
        callbacks.close()
    if dist_info.is_main:
        _plot_curves(run_dir)
    return TrainResult(run_dir, state.epoch, state.step, stopper.best, stopper.best_epoch, last_val,
                       time.monotonic() - start, stop_reason)


def _train_step(
    train_model: nn.Module, model: nn.Module, image: torch.Tensor, label: torch.Tensor,
    losses: tuple[nn.Module, nn.Module], optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
    dtype: torch.dtype | None, grad_clip: float | None,
) -> float:
    """One optimizer step on a batch image (B, C, *P), label (B, *P); returns the loss value.

    ``losses`` is (plain loss, deep-supervision loss): the second is used when the network returns a list of
    logits (deep supervision); a model's ``auxiliary_loss()`` (e.g. the VAE branch) is added.
    """
    loss_fn, deep_loss_fn = losses
    with torch.autocast(image.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        out = train_model(image)
        loss = deep_loss_fn(list(out), label) if isinstance(out, (list, tuple)) else loss_fn(out, label)
        aux = getattr(model, "auxiliary_loss", None)
        if callable(aux):
            extra = aux()
            if extra is not None:
                loss = loss + extra
    if not torch.isfinite(loss):
        raise ConfigError(f"training loss became {loss.item()}; lower the learning rate (--lr) or use --amp none")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return float(loss.detach())


def _stop_now(budget: Budget, dist_info: distributed.DistInfo, device: torch.device) -> bool:
    """Budget check, agreed across ranks (any rank out of time stops them all)."""
    if budget.seconds is None:
        return False
    flag = torch.tensor([1.0 if budget.exhausted() else 0.0], device=device)
    if dist_info.enabled:
        distributed.all_reduce_sum(flag)
    return bool(flag.item() > 0)


def _validation_due(budget: Budget, fraction: float | None, dist_info: distributed.DistInfo,
                    device: torch.device) -> bool:
    """Under a time budget, whether an intermediate validation keeps validating within ``fraction`` of the
    time spent so far (agreed across ranks). Networks whose validation is slow then validate less often
    instead of eating the training time; the final validation always runs."""
    if budget.seconds is None or not fraction:
        return True
    ok = budget.val_total + budget.validation_seconds() <= fraction * budget.elapsed()
    flag = torch.tensor([0.0 if ok else 1.0], device=device)
    if dist_info.enabled:
        distributed.all_reduce_sum(flag)
    return bool(flag.item() == 0)


def _final_factor(budget: Budget, dist_info: distributed.DistInfo, device: torch.device) -> int:
    """The final validation's cost factor (mirroring when it fits the budget), agreed across ranks."""
    factor = budget.final_factor()
    if factor > 1 and not budget.can_validate(factor):
        factor = 1
    flag = torch.tensor([0.0 if factor > 1 else 1.0], device=device)
    if dist_info.enabled:
        distributed.all_reduce_sum(flag)
    return budget.tta_factor if flag.item() == 0 and factor > 1 else 1


def _validation_fits(budget: Budget, dist_info: distributed.DistInfo, device: torch.device, factor: int = 1) -> bool:
    """Whether a validation (``factor`` times a plain one) still fits in the budget, agreed across ranks."""
    if budget.seconds is None:
        return True
    flag = torch.tensor([0.0 if budget.can_validate(factor) else 1.0], device=device)
    if dist_info.enabled:
        distributed.all_reduce_sum(flag)
    return bool(flag.item() == 0)


def _mean_across_ranks(values: list[float], device: torch.device) -> float:
    t = torch.tensor([sum(values), float(len(values))], dtype=torch.float64, device=device)
    distributed.all_reduce_sum(t)
    return float(t[0] / t[1]) if t[1] > 0 else float("nan")


def _log_overlay(callbacks: CallbackList, epoch: int, image: np.ndarray, pred: np.ndarray) -> None:
    try:
        from medzoo.viz.overlay import overlay_slices

        rgb = overlay_slices(image, pred)
    except Exception as err:  # noqa: BLE001 - a picture must never stop training
        log.debug("no overlay image: %s", err)
        return
    callbacks.on_validation_image(epoch, rgb)


def _plot_curves(run_dir: Path) -> None:
    try:
        from medzoo.viz.curves import plot_training_curves

        plot_training_curves(run_dir / "metrics.csv", run_dir / "training_curves.png")
    except Exception as err:  # noqa: BLE001 - a picture must never fail a finished run
        log.warning("could not draw training curves: %s", err)
