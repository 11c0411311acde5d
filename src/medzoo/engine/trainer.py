"""Training: one readable loop with callbacks.

:func:`train` prepares a run folder (plan, splits, preprocessed cache), builds the network, optimizer,
schedule and loss, then runs::

    for each epoch:
        re-seed every generator from (seed, epoch, rank); set the learning rate from the schedule
        train `iterations_per_epoch` steps on patches from this rank's training cases
        every `val_every` epochs: sliding-window validation -> best checkpoint, early stopping
        write checkpoint_last.pt, metrics.csv, TensorBoard

A wall-clock ``time_budget`` (:mod:`medzoo.engine.budget`) stops training early enough to leave time for the
final validation. Under ``torchrun`` the same code runs one process per device (DDP); only rank 0 writes
files.
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

from medzoo import runtime
from medzoo.engine import distributed
from medzoo.engine.budget import (
    Budget,
    calibrate_budget,
    estimate_validation_seconds,
    final_validation_factor,
    stop_now,
    validation_due,
    validation_fits,
)
from medzoo.engine.callbacks import CallbackList, CSVLogger, EarlyStopping, ProgressBar, TensorBoardLogger
from medzoo.engine.checkpoint import build_model, load_checkpoint, save_checkpoint
from medzoo.engine.config import TrainConfig
from medzoo.engine.rng import capture_rng, restore_rng, seed_epoch, seed_everything, set_determinism
from medzoo.engine.schedules import Schedule, create_schedule
from medzoo.engine.splits import load_splits, make_splits, save_splits
from medzoo.engine.validation import ValidationResult, validate
from medzoo.errors import CheckpointError, ConfigError, DataError
from medzoo.models.registry import prefers_channels_last
from medzoo.planning.plan import Plan
from medzoo.runtime import compile_requested, maybe_compile, release_memory, tune_malloc

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


def fused_optimizer_options(params: list[nn.Parameter], optimizer: str = "sgd") -> dict[str, Any]:
    """``{"fused": True}`` where ``optimizer`` ("sgd", "adam", "adamw") has PyTorch's fused CPU kernel and every
    parameter is on the CPU, else ``{}``.

    On the CPU, PyTorch's optimizers otherwise update one parameter at a time: for nnU-Net's network (64
    tensors, 5.6 M values) an SGD step with nesterov momentum took 10.1 ms, fused 2.6 ms (the same update).
    CUDA keeps PyTorch's default (its multi-tensor path).
    """
    if optimizer not in ("sgd", "adam", "adamw") or not params or any(p.device.type != "cpu" for p in params):
        return {}
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[optimizer]
    try:
        cls([torch.zeros(1, requires_grad=True)], lr=0.1, fused=True)
    except (RuntimeError, TypeError, ValueError):  # an older PyTorch without the fused CPU kernel
        return {}
    return {"fused": True}


def build_optimizer(config: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer named by ``config.optimizer`` over ``params`` (fused on the CPU where PyTorch has it,
    :func:`fused_optimizer_options`)."""
    lr, wd = config.learning_rate, config.weight_decay
    fused = fused_optimizer_options(params, config.optimizer)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=wd, nesterov=True, **fused)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, **fused)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, **fused)
    return torch.optim.RMSprop(params, lr=lr, weight_decay=wd, momentum=min(config.momentum, 0.9))


def amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype of the training steps and validations (None: fp32): :func:`medzoo.runtime.autocast_dtype`."""
    return runtime.autocast_dtype(config.amp, device, "training")


def cpu_bf16_guard(dtype: torch.dtype | None, model: nn.Module, plan: Plan, device: torch.device,
                   auto: bool = False) -> torch.dtype | None:
    """``dtype``, or None (fp32) where bf16 on the CPU is unsafe or, with ``auto``, not worth it
    (:func:`medzoo.runtime.bf16_guard` on a patch of ``plan``)."""
    return runtime.bf16_guard(dtype, model, (1, plan.in_channels, *plan.patch_size), device, auto, plan.model)


def _autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """``torch.autocast`` to ``dtype`` on ``device``'s type; a disabled one for None (fp32)."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


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
    budget = config.budget_seconds if config.epochs is None else None  # the plan fits a time budget
    return make_plan(info, fingerprint, time_budget=budget, **overrides)


@dataclass
class _Data:
    plan: Plan
    train_cases: list
    val_cases: list


def _prepare_data(config: TrainConfig, run_dir: Path, resume: bool, info_dist: distributed.DistInfo) -> _Data:
    """Plan (or reload it), split, cache the preprocessed cases; rank 0 writes, the others wait and read."""
    from medzoo.data.cache import build_cache
    from medzoo.data.layouts import load_dataset

    info = load_dataset(config.data, layout=config.layout, **config.layout_options)
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


DATA_WAIT_WARN = 0.2  # an epoch whose steps waited this share of its time for patches gets a warning


def data_wait_fraction(waited: float, epoch_seconds: float, steps: int) -> float:
    """Share of an epoch's training time (validation excluded) spent waiting for the loader's next batch;
    NaN for an epoch without steps."""
    if steps == 0 or epoch_seconds <= 0:
        return float("nan")
    return min(1.0, waited / epoch_seconds)


class DataWaitWarning:
    """Warns once per run when the network waited for training patches more than :data:`DATA_WAIT_WARN` of
    an epoch (the loader, not the network, sets the pace). The first epoch is not judged: it also pays for
    first reads of the preprocessed cases and the first steps' warm-up."""

    def __init__(self) -> None:
        self.warned = False
        self.epochs_seen = 0

    def observe(self, fraction: float, epoch: int, num_workers: int) -> None:
        self.epochs_seen += 1
        if self.warned or self.epochs_seen < 2 or not fraction > DATA_WAIT_WARN:
            return
        self.warned = True
        log.warning("epoch %d: the network waited for training patches %.0f%% of the time (metrics.csv: "
                    "data_wait_fraction); the loader sets the pace: more loader workers (now %d, "
                    "--num-workers), a preprocessed cache on a fast disk, or lighter augmentation (--augment "
                    "standard)", epoch, 100 * fraction, num_workers)  # fmt: skip


def _make_loader(plan: Plan, cases: list, config: TrainConfig, seed: int, augment: str):
    """The training patch loader of one epoch, with the augmentation :func:`resolve_augment` chose."""
    from medzoo.data.loader import PatchLoader

    return PatchLoader(
        cases, plan.patch_size, plan.batch_size, spatial_dims=plan.spatial_dims, seed=seed,
        num_workers=config.num_workers, slice_axis=plan.slice_axis, context_slices=plan.context_slices,
        augment=augment,
    )


LIGHT_AUGMENT_MAX_STEPS = 10_000  # "auto": the light set up to this many steps (better up to 3500; level at 13k)


def resolve_augment(config: TrainConfig, budget: Budget, probed: bool) -> str:
    """The augmentation a run uses: ``config.augment``, or for "auto" the light "standard" set when the run is
    expected to take at most :data:`LIGHT_AUGMENT_MAX_STEPS` steps, else nnU-Net's "default" set.

    Under a time budget the expected steps are the budget over the probed step time; without a probe, "default".
    """
    if config.augment != "auto":
        return config.augment
    if config.epochs is not None or budget.seconds is None:
        steps = config.max_epochs * config.iterations_per_epoch
    elif probed and budget.step_estimate > 0:
        steps = int(budget.seconds / budget.step_estimate)
    else:
        return "default"
    choice = "standard" if steps <= LIGHT_AUGMENT_MAX_STEPS else "default"
    log.info("augmentation '%s' (auto: about %d steps expected; light set up to %d)", choice, steps,
             LIGHT_AUGMENT_MAX_STEPS)
    return choice


# --------------------------------------------------------------------------------------------- the loop


@dataclass
class _State:
    epoch: int = 0  # epochs completed
    step: int = 0
    elapsed: float = 0.0  # training seconds of earlier (resumed) sessions
    augment: str | None = None  # resolved augmentation (kept across a resume)


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
        "augment": state.augment,
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
    tune_malloc()  # reuse freed activations instead of page-faulting them back in every step
    dist_info = distributed.env_info()
    device = distributed.resolve_device(config.device, dist_info)
    distributed.setup(device, dist_info)
    try:
        if config.task == "classify":
            from medzoo.engine.classify import train_classifier

            result = train_classifier(config, resume=resume, device=device, dist_info=dist_info, start=start)
        else:
            result = _train_segmentation(config, resume, device, dist_info, start)
        # every rank gets here (rank 0 writes the curves last) before the process group is torn down: a rank
        # that left early aborted now and then in gloo's teardown ("terminate called without an active exception")
        distributed.barrier()
        return result
    finally:
        distributed.cleanup()
        release_memory()


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
    memory_format = runtime.preferred_memory_format(config.memory_format, plan.spatial_dims, device,
                                                    prefers_channels_last(plan.model))
    if memory_format is not None:
        model = model.to(memory_format=memory_format)
    log.info("memory format: %s", "contiguous" if memory_format is None else str(memory_format).removeprefix("torch."))
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
    dtype = cpu_bf16_guard(amp_dtype(config, device), model, plan, device, auto=config.amp == "auto")
    log.info("precision: %s (amp '%s' on %s)", "fp32" if dtype is None else f"{str(dtype).removeprefix('torch.')} autocast",
             config.amp, device.type)
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
        # checkpoints written before the augment setting existed were trained with nnU-Net's set
        state = _State(int(ckpt["epoch"]), int(ckpt["step"]), float(ckpt.get("elapsed", 0.0)),
                       ckpt.get("augment", "default"))
        restore_rng(ckpt["rng"])
        log.info("resuming %s after epoch %d (step %d)", run_dir, state.epoch, state.step)

    train_model: nn.Module = model
    if dist_info.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    eager_model = train_model
    compile_pending = compile_requested(config.compile)  # compiled lazily, on the first step
    if compile_pending:
        train_model = maybe_compile(train_model, True)

    callbacks = CallbackList([])
    if dist_info.is_main:
        columns = (["val_dice_mean"] + [f"val_dice_{n}" for n in plan.foreground_labels.values()]
                   + ["data_wait_fraction"])  # fmt: skip
        callbacks = CallbackList([CSVLogger(run_dir / "metrics.csv", columns),
                                  TensorBoardLogger(run_dir / "tensorboard")])
        callbacks.callbacks.append(ProgressBar(config.max_epochs, config.budget_seconds, config.progress))
    callbacks.on_train_start(run_dir, state.epoch)

    budget = Budget(config.budget_seconds, start - state.elapsed)
    with _autocast(device, dtype):  # priced in the precision the steps and validations will run in
        probed = budget.seconds is not None and calibrate_budget(
            budget, model, optimizer, plan, val_cases, device, config.val_overlap) is not None
    if config.final_tta:
        budget.tta_factor = 2**plan.spatial_dims
    if state.augment is None:  # a resumed run keeps its augmentation
        state.augment = resolve_augment(config, budget, probed)
        # every rank the same: the light set only if every rank's estimate chose it
        if config.augment == "auto" and distributed.any_rank(state.augment != "standard", dist_info, device):
            state.augment = "default"
    stop_reason = "epochs"
    data_waits = DataWaitWarning()
    last_val: dict[str, float] = {}
    steps_since_val = 0
    base_lr = config.learning_rate

    def run_validation(epoch: int, factor: int = 1) -> dict[str, float]:
        """Validate; ``factor`` > 1 mirrors every spatial axis of the network's input (the final validation)."""
        t0 = time.monotonic()
        mirror = tuple(range(plan.spatial_dims)) if factor > 1 else None
        if mirror:
            log.info("final validation with mirroring test-time augmentation (as `medzoo predict --tta`)")
        with _autocast(device, dtype):
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
            loader = _make_loader(plan, train_cases, config, seed_epoch(config.seed, epoch, dist_info.rank),
                                  state.augment)
            callbacks.on_epoch_start(epoch, config.iterations_per_epoch)
            train_model.train()
            losses = []
            data_wait, epoch_t0 = 0.0, time.monotonic()
            try:
                batches = iter(loader)
                for _ in range(config.iterations_per_epoch):
                    if stop_now(budget, dist_info, device):
                        stop_reason = "time_budget"
                        break
                    t0 = time.monotonic()
                    image, label = next(batches)
                    data_wait += time.monotonic() - t0
                    image = image.to(device, memory_format=memory_format or torch.contiguous_format)
                    step_args = (image, label.to(device), (loss_fn, deep_loss_fn), optimizer, scaler,
                                 dtype, config.grad_clip)
                    compiling, compile_pending = compile_pending, False
                    if compiling:
                        train_model, loss = _first_compiled_step(train_model, eager_model, model, step_args)
                    else:
                        loss = _train_step(train_model, model, *step_args)
                    losses.append(loss)
                    state.step += 1
                    steps_since_val += 1
                    if not compiling:  # the compile time is no step time
                        budget.record_step(time.monotonic() - t0)
                    if budget.val_time is None and budget.seconds is not None and not probed:
                        # A step is about 2.5 forward passes of its batch: cost a validation window from it.
                        per_voxel = budget.step_time / 2.5 / (plan.batch_size * math.prod(plan.patch_size))
                        budget.val_estimate = estimate_validation_seconds(per_voxel, plan, val_cases,
                                                                    config.val_overlap)
                    callbacks.on_step_end(state.step, loss)
            finally:
                if hasattr(loader, "close"):
                    loader.close()
            wait_fraction = data_wait_fraction(data_wait, time.monotonic() - epoch_t0, len(losses))
            data_waits.observe(wait_fraction, state.epoch + 1, config.num_workers)
            mean_loss = _mean_across_ranks(losses, device)
            state.epoch = epoch + 1
            state.elapsed = budget.elapsed()
            logs: dict[str, Any] = {"epoch": state.epoch, "train_loss": mean_loss, "lr": lr,
                                    "data_wait_fraction": wait_fraction}  # fmt: skip
            last_epoch = state.epoch == config.max_epochs or stop_reason == "time_budget"
            due = last_epoch or (state.epoch % config.val_every == 0
                                 and validation_due(budget, config.val_time_fraction, dist_info, device))
            factor = final_validation_factor(budget, dist_info, device) if last_epoch else 1
            if due and validation_fits(budget, dist_info, device, factor):
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
            factor = final_validation_factor(budget, dist_info, device)
            validated = validation_fits(budget, dist_info, device, factor)
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
    with _autocast(image.device, dtype):
        out = train_model(image)
        aux = getattr(model, "auxiliary_loss", None)
        extra = aux() if callable(aux) else None
    # the loss in fp32 whatever the network computed in: softmax and Dice sums lose too much in bf16
    if isinstance(out, (list, tuple)):
        loss = deep_loss_fn([o.float() for o in out], label)
    else:
        loss = loss_fn(out.float(), label)
    if extra is not None:
        loss = loss + extra.float()
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


def _first_compiled_step(
    compiled: nn.Module, eager: nn.Module, model: nn.Module, step_args: tuple
) -> tuple[nn.Module, float]:
    """The first training step through ``torch.compile`` (which compiles); if compiling fails, the same step
    runs eagerly and training goes on without compiling. Returns (the network to train with, the loss)."""
    t0 = time.monotonic()
    try:
        loss = _train_step(compiled, model, *step_args)
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 - inductor/dynamo failures have many types (no compiler, ...)
        first_line = (str(err).strip().splitlines() or [""])[0]
        log.warning("torch.compile failed (%s: %s); training goes on without it", type(err).__name__, first_line)
        return eager, _train_step(eager, model, *step_args)
    log.info("torch.compile: the first step took %.1fs, compiling included", time.monotonic() - t0)
    return compiled, loss


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
