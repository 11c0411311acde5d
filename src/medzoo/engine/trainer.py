"""Training: one :class:`Trainer` for every task, its loop readable in one sitting.

:func:`train` sets up the process (device, DDP) and runs a :class:`Trainer`, which prepares the run folder
(plan, splits, data: the task's part), builds the network, optimizer, schedule and runtime settings, then::

    for each epoch:
        set the learning rate from the schedule; draw batches from a seed of (seed, epoch, rank)
        train `iterations_per_epoch` optimizer steps
        every `val_every` epochs and after the last: validate -> best checkpoint, early stopping
        write checkpoint_last.pt; log the epoch (metrics.csv, TensorBoard, one progress line)

What differs between segmentation and classification is the task object's (:mod:`medzoo.engine.tasks`).
A wall-clock ``time_budget`` (:mod:`medzoo.engine.budget`) stops training early enough to leave time for the
final validation. Under ``torchrun`` the same code runs one process per device (DDP); only rank 0 writes
files.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medzoo import runtime
from medzoo.engine import distributed
from medzoo.engine.budget import Budget, final_validation_factor, stop_now, validation_due, validation_fits
from medzoo.engine.callbacks import CallbackList, CSVLogger, EarlyStopping, ProgressBar, TensorBoardLogger
from medzoo.engine.checkpoint import build_model, load_checkpoint, save_checkpoint
from medzoo.engine.config import TrainConfig
from medzoo.engine.rng import capture_rng, restore_rng, seed_epoch, seed_everything, set_determinism
from medzoo.engine.runlock import hold_run_lock, release_run_lock
from medzoo.engine.schedules import Schedule, create_schedule
from medzoo.engine.tasks import Task
from medzoo.errors import CheckpointError, ConfigError
from medzoo.models.registry import prefers_channels_last
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

    On the CPU, PyTorch's optimizers otherwise update one parameter at a time; the fused kernel does the same
    update for all of them at once. CUDA keeps PyTorch's default (its multi-tensor path).
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


def prepare_run_dir(config: TrainConfig, resume: bool, is_main: bool) -> Path:
    """Create (or check, on resume) the run folder and write ``config.json``."""
    run_dir = Path(config.out)
    if is_main:
        hold_run_lock(run_dir, create=not resume)  # a second training into this folder stops here (one line)
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


# ------------------------------------------------------------------------------------------- the trainer


@dataclass
class _State:
    epoch: int = 0  # epochs completed
    step: int = 0
    elapsed: float = 0.0  # training seconds of earlier (resumed) sessions
    augment: str | None = None  # resolved augmentation (kept across a resume)


def create_task(config: TrainConfig) -> Task:
    """The task object of ``config.task``."""
    from medzoo.engine.classify import ClassificationTask
    from medzoo.engine.segment import SegmentationTask

    return {"segment": SegmentationTask, "classify": ClassificationTask}[config.task](config)


class Trainer:
    """One training run of any task: resume, checkpoints, callbacks, DDP, time budget, precision.

    :meth:`setup` builds everything, :meth:`run` is the loop. What differs between segmentation and
    classification (batches, loss, validation, metric) is the ``task``'s (:mod:`medzoo.engine.tasks`).

    Args:
        config: the run's settings.
        task: the task object (default: :func:`create_task` of ``config``).
        resume: continue the run in ``config.out`` from its ``checkpoint_last.pt``.
        device: where to train; ``dist_info``: this process's DDP rank (both set up by :func:`train`).
        start: ``time.monotonic()`` when the run started (the time budget counts from it).
    """

    def __init__(self, config: TrainConfig, task: Task | None = None, *, resume: bool = False,
                 device: torch.device | None = None, dist_info: distributed.DistInfo | None = None,
                 start: float | None = None) -> None:
        self.config = config
        self.task = task or create_task(config)
        self.resume = resume
        self.device = device or torch.device("cpu")
        self.dist = dist_info or distributed.DistInfo()
        self.start = time.monotonic() if start is None else start
        self.state = _State()
        self.callbacks = CallbackList([])
        self.stop_reason = "epochs"
        self.last_val: dict[str, float] = {}
        self.steps_since_val = 0
        self.data_waits = DataWaitWarning()

    # ------------------------------------------------------------------------------------------- the loop

    def run(self) -> TrainResult:
        """Train epoch by epoch until the epochs, the time budget or early stopping end it; then validate the
        final weights if the last epoch did not, and write the last checkpoint."""
        self.setup()
        try:
            for epoch in range(self.state.epoch, self.config.max_epochs):
                if self.budget.exhausted():
                    self.stop_reason = "time_budget"
                    break
                logs = self.train_epoch(epoch)
                if self.stop_reason != "time_budget" and stop_now(self.budget, self.dist, self.device):
                    # no time for another step: this epoch's validation is the final one, in the time reserved
                    # for it (else a plain validation due now would leave that reserve unused)
                    self.stop_reason = "time_budget"
                last_epoch = self.state.epoch == self.config.max_epochs or self.stop_reason == "time_budget"
                logs.update(self.validate_if_due(last_epoch))
                logs["seconds"] = self.state.elapsed = self.budget.elapsed()
                self.checkpoint_if_due(last_epoch)
                self.callbacks.on_epoch_end(self.state.epoch, logs)
                if self.should_stop():
                    break
            self.finish()
        finally:
            self.callbacks.close()
        if self.dist.is_main:
            _plot_curves(self.run_dir)
        return TrainResult(self.run_dir, self.state.epoch, self.state.step, self.stopper.best,
                           self.stopper.best_epoch, self.last_val, time.monotonic() - self.start, self.stop_reason)

    # ------------------------------------------------------------------------------------------ the steps

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """``iterations_per_epoch`` optimizer steps (fewer when the time budget runs out) at the schedule's
        learning rate, on batches drawn from a seed of (run seed, epoch, rank)."""
        config = self.config
        progress = self.budget.progress() if config.epochs is None else epoch / config.max_epochs
        lr = config.learning_rate * self.schedule.factor(epoch, progress)
        _set_lr(self.optimizer, lr)
        batches = self.task.batches(seed_epoch(config.seed, epoch, self.dist.rank), self.state.augment)
        self.callbacks.on_epoch_start(epoch, config.iterations_per_epoch)
        self.train_model.train()
        losses, waited, epoch_t0 = [], 0.0, time.monotonic()
        try:
            iterator = iter(batches)
            for _ in range(config.iterations_per_epoch):
                if stop_now(self.budget, self.dist, self.device):
                    self.stop_reason = "time_budget"
                    break
                t0 = time.monotonic()
                inputs, target = next(iterator)
                waited += time.monotonic() - t0
                losses.append(self.train_step(inputs, target, t0))
        finally:
            if hasattr(batches, "close"):
                batches.close()
        wait_fraction = data_wait_fraction(waited, time.monotonic() - epoch_t0, len(losses))
        self.data_waits.observe(wait_fraction, epoch + 1, config.num_workers)
        mean_loss = _mean_across_ranks(losses, self.device)
        self.state.epoch = epoch + 1
        self.state.elapsed = self.budget.elapsed()
        return {"epoch": self.state.epoch, "train_loss": mean_loss, "lr": lr, "data_wait_fraction": wait_fraction}

    def train_step(self, inputs: torch.Tensor, target: torch.Tensor, t0: float) -> float:
        """One optimizer step with its bookkeeping (step count, budget, callbacks); returns the loss."""
        inputs = inputs.to(self.device, memory_format=self.memory_format or torch.contiguous_format)
        target = target.to(self.device)
        if self.compile_pending:
            self.compile_pending = False
            loss = self.first_compiled_step(inputs, target)  # the compile time is no step time
        else:
            loss = self.optimizer_step(inputs, target)
            self.budget.record_step(time.monotonic() - t0)
        self.state.step += 1
        self.steps_since_val += 1
        if self.budget.val_time is None and self.budget.seconds is not None and not self.probed:
            self.task.estimate_validation(self.budget)
        self.callbacks.on_step_end(self.state.step, loss)
        return loss

    def optimizer_step(self, inputs: torch.Tensor, target: torch.Tensor) -> float:
        """Forward (in the run's precision), the task's loss in fp32 plus a network's ``auxiliary_loss()``
        (e.g. the VAE branch), backward, gradient clipping, optimizer step; returns the loss value."""
        with _autocast(self.device, self.dtype):
            output = self.train_model(inputs)
            aux = getattr(self.model, "auxiliary_loss", None)
            extra = aux() if callable(aux) else None
        loss = self.task.loss(output, target)
        if extra is not None:
            loss = loss + extra.float()
        if not torch.isfinite(loss):
            raise ConfigError(f"training loss became {loss.item()}; lower the learning rate (--lr) or use --amp none")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())

    def first_compiled_step(self, inputs: torch.Tensor, target: torch.Tensor) -> float:
        """The first step through ``torch.compile`` (which compiles); if compiling fails, the same step runs
        eagerly and training goes on without compiling."""
        t0 = time.monotonic()
        try:
            loss = self.optimizer_step(inputs, target)
        except ConfigError:
            raise
        except Exception as err:  # noqa: BLE001 - inductor/dynamo failures have many types (no compiler, ...)
            first_line = (str(err).strip().splitlines() or [""])[0]
            log.warning("torch.compile failed (%s: %s); training goes on without it", type(err).__name__, first_line)
            self.train_model = self.eager_model
            return self.optimizer_step(inputs, target)
        log.info("torch.compile: the first step took %.1fs, compiling included", time.monotonic() - t0)
        return loss

    def validate_if_due(self, last_epoch: bool) -> dict[str, float]:
        """Validate after the last epoch and every ``val_every`` epochs while validations keep within their
        share of a time budget, if the validation fits in what is left of it (decided alike on every rank)."""
        config, budget, dist, device = self.config, self.budget, self.dist, self.device
        due = last_epoch or (self.state.epoch % config.val_every == 0
                             and validation_due(budget, config.val_time_fraction, dist, device))
        factor = final_validation_factor(budget, dist, device) if last_epoch else 1
        if not (due and validation_fits(budget, dist, device, factor)):
            return {}
        self.last_val = self.validate(factor)
        self.steps_since_val = 0
        return self.last_val

    def validate(self, factor: int = 1) -> dict[str, float]:
        """Validate the current weights; the best so far become ``checkpoint_best.pt``. ``factor`` > 1 mirrors
        every spatial axis of the network's input (the final validation, as ``medzoo predict --tta``)."""
        t0 = time.monotonic()
        if factor > 1:
            log.info("final validation with mirroring test-time augmentation (as `medzoo predict --tta`)")
        with _autocast(self.device, self.dtype):
            result = self.task.validate(self.model, mirror=factor > 1,
                                        keep_example=self.config.log_images and self.dist.is_main)
        seconds = time.monotonic() - t0
        self.budget.val_time = seconds / factor
        self.budget.val_total += seconds
        self.schedule.observe(result.metric)
        if self.stopper.update(result.metric, self.state.epoch) and self.dist.is_main:
            save_checkpoint(self.run_dir / "checkpoint_best.pt", self.checkpoint_state())
        if result.example is not None:
            _log_overlay(self.callbacks, self.state.epoch, *result.example)
        return result.logs

    def checkpoint_if_due(self, last_epoch: bool) -> None:
        """``checkpoint_last.pt`` every ``checkpoint_every`` epochs and after the last one (rank 0)."""
        if self.dist.is_main and (self.state.epoch % self.config.checkpoint_every == 0 or last_epoch):
            t0 = time.monotonic()
            save_checkpoint(self.run_dir / "checkpoint_last.pt", self.checkpoint_state())
            self.budget.save_time = time.monotonic() - t0

    def should_stop(self) -> bool:
        """Early stopping (patience used up) or the time budget (spent during the epoch)."""
        if self.stopper.should_stop:
            self.stop_reason = "early_stopping"
            return True
        return self.stop_reason == "time_budget"

    def finish(self) -> None:
        """Validate the final weights when the loop ended without it (and the budget allows), write the last
        checkpoint, and tell the callbacks."""
        budget, dist, device = self.budget, self.dist, self.device
        if self.state.step == 0 and self.stop_reason == "time_budget":
            plan = self.plan
            log.warning(
                "time budget of %.0fs left no time for one training step of %s (patch %s, batch %d): a step "
                "takes about %.1fs, validation about %.1fs; give a longer --time-budget or a smaller --patch-size "
                "/ --batch-size", budget.seconds, plan.model, "x".join(map(str, plan.patch_size)),
                plan.batch_size, budget.next_step(), budget.validation_seconds())
        if self.steps_since_val > 0 or not self.last_val:
            factor = final_validation_factor(budget, dist, device)
            validated = validation_fits(budget, dist, device, factor)
            if validated:
                self.last_val = self.validate(factor)
            else:
                log.warning("time budget: no time left for the final validation (about %.1fs); the run has no "
                            "validation score for its last weights", budget.validation_seconds())
            if dist.is_main and (validated or not (self.run_dir / "checkpoint_last.pt").exists()):
                save_checkpoint(self.run_dir / "checkpoint_last.pt", self.checkpoint_state())
        if dist.is_main:
            self.task.after_training(budget)
        self.callbacks.on_train_end({"epoch": self.state.epoch, **self.last_val, "seconds": budget.elapsed()})

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything a resume needs (the keys of every medzoo checkpoint)."""
        return {
            "model": _unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "scheduler": self.schedule.state_dict(),
            "early_stopping": self.stopper.state_dict(),
            "epoch": self.state.epoch,
            "step": self.state.step,
            "elapsed": self.state.elapsed,
            "augment": self.state.augment,
            "best_metric": self.stopper.best,
            "plan": self.plan.to_dict(),
            "model_name": self.plan.model,
            "config": self.config.to_dict(),
            "rng": capture_rng(),
        }

    # ------------------------------------------------------------------------------------------ the setup

    def setup(self) -> None:
        """Run folder, plan and data, network, runtime settings, optimizer and schedule, resume, DDP,
        callbacks and the time budget, in that order (the order keeps every random draw where it was)."""
        config = self.config
        self.run_dir = prepare_run_dir(config, self.resume, self.dist.is_main)
        set_determinism(config.deterministic, self.device)
        seed_everything(config.seed)
        self.plan = self.task.prepare(self.run_dir, self.resume, self.dist, self.device)
        seed_everything(config.seed)  # same initial weights on every rank and every run
        self.model = build_model(self.plan).to(self.device)
        self.setup_runtime()
        if not self.resume:
            apply_transfer(self.model, config)
        elif config.freeze:
            from medzoo.models.transfer import freeze

            freeze(self.model, list(config.freeze))
        self.optimizer = build_optimizer(config, [p for p in self.model.parameters() if p.requires_grad])
        self.schedule: Schedule = create_schedule(
            config.schedule, warmup_epochs=config.warmup_epochs, step_size=config.step_size, gamma=config.gamma,
            plateau_patience=config.plateau_patience,
        )
        self.stopper = EarlyStopping(config.patience)
        if self.resume:
            self.restore()
        self.setup_parallel()
        self.setup_callbacks()
        self.setup_budget()

    def setup_runtime(self) -> None:
        """The one place where the run's runtime is decided: allocator, memory format, precision, compile.
        A task that is not ``accelerated`` trains in fp32, contiguous and eager."""
        tune_malloc()  # reuse freed activations instead of page-faulting them back in every step
        config, plan, device, model = self.config, self.plan, self.device, self.model
        accelerated = self.task.accelerated
        self.memory_format = (runtime.preferred_memory_format(config.memory_format, plan.spatial_dims, device,
                                                              prefers_channels_last(plan.model))
                              if accelerated else None)  # fmt: skip
        if self.memory_format is not None:
            model.to(memory_format=self.memory_format)
        log.info("memory format: %s", "contiguous" if self.memory_format is None
                 else str(self.memory_format).removeprefix("torch."))  # fmt: skip
        patch = (1, plan.in_channels, *plan.patch_size)
        self.dtype = (runtime.training_autocast_dtype(config.amp, device, model, patch, plan.model)
                      if accelerated else None)  # fmt: skip
        log.info("precision: %s (amp '%s' on %s)", "fp32" if self.dtype is None
                 else f"{str(self.dtype).removeprefix('torch.')} autocast", config.amp, device.type)  # fmt: skip
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.compile_pending = accelerated and compile_requested(config.compile)  # compiled on the first step

    def restore(self) -> None:
        """Load ``checkpoint_last.pt``: weights, optimizer, scaler, schedule, early stopping, counters, RNG."""
        ckpt = load_checkpoint(self.run_dir / "checkpoint_last.pt", map_location=self.device)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.schedule.load_state_dict(ckpt["scheduler"])
        self.stopper.load_state_dict(ckpt["early_stopping"])
        self.state = _State(int(ckpt["epoch"]), int(ckpt["step"]), float(ckpt.get("elapsed", 0.0)),
                            ckpt.get("augment", self.task.legacy_augment))
        restore_rng(ckpt["rng"])
        log.info("resuming %s after epoch %d (step %d)", self.run_dir, self.state.epoch, self.state.step)

    def setup_parallel(self) -> None:
        """DDP across ranks; ``torch.compile`` (lazily, on the first step) when asked for."""
        self.train_model: nn.Module = self.model
        if self.dist.enabled:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.eager_model = self.train_model
        if self.compile_pending:
            self.train_model = maybe_compile(self.train_model, True)

    def setup_callbacks(self) -> None:
        """metrics.csv, TensorBoard and the progress lines, on rank 0."""
        config = self.config
        if self.dist.is_main:
            self.callbacks = CallbackList([
                CSVLogger(self.run_dir / "metrics.csv", self.task.metric_columns),
                TensorBoardLogger(self.run_dir / "tensorboard"),
                ProgressBar(config.max_epochs, config.budget_seconds, config.progress),
            ])  # fmt: skip
        self.callbacks.on_train_start(self.run_dir, self.state.epoch)

    def setup_budget(self) -> None:
        """The time budget (counting the time of earlier sessions), its first estimates, and the
        augmentation of a new run (which may depend on how many steps the budget allows)."""
        self.budget = Budget(self.config.budget_seconds, self.start - self.state.elapsed)
        with _autocast(self.device, self.dtype):  # priced in the precision the steps and validations run in
            self.probed = self.budget.seconds is not None and self.task.calibrate(self.budget, self.model,
                                                                                  self.optimizer)
        if self.config.final_tta:
            self.budget.tta_factor = self.task.tta_factor
        if self.state.augment is None:  # a resumed run keeps its augmentation
            self.state.augment = self.task.choose_augment(self.budget, self.probed)


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
        result = Trainer(config, resume=resume, device=device, dist_info=dist_info, start=start).run()
        # every rank gets here (rank 0 writes the curves last) before the process group is torn down: a rank
        # that left early aborted now and then in gloo's teardown ("terminate called without an active exception")
        distributed.barrier()
        return result
    finally:
        release_run_lock(config.out)
        distributed.cleanup()
        release_memory()

def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


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
