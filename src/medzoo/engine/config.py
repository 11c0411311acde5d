"""The :class:`TrainConfig`: every choice of a training run, saved as ``config.json`` in the run folder."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from medzoo.errors import ConfigError
from medzoo.utils import atomic_write_text, parse_duration

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULES = ("poly", "cosine", "step", "plateau", "constant")
TASKS = ("segment", "classify")
AMP_MODES = ("auto", "bf16", "fp16", "none")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
#: ``medzoo predict``'s outputs: label-map images named like the inputs, or DICOM SEG objects
OUTPUT_FORMATS = ("image", "dicom-seg")
AUGMENTS = ("auto", "standard", "default", "strong", "none")
DEFAULT_LR = {"sgd": 1e-2, "adam": 1e-3, "adamw": 1e-3, "rmsprop": 1e-3}


@dataclass
class TrainConfig:
    """Settings of one training run (the CLI maps its flags onto these fields).

    Attributes:
        data: dataset root (segmentation) or CSV file (classification).
        out: run folder to create (everything needed to predict/resume is written there).
        layout: dataset layout name; None auto-detects.
        layout_options: options of the layout (e.g. ``{"classes": 4}`` for mrbrains, glob patterns for folder).
        task: "segment" or "classify".
        model: registry name; None lets the planner choose.
        model_kwargs: overrides of the network's arguments.
        epochs: number of epochs; None with no ``time_budget`` means 50.
        time_budget: wall-clock budget ("10m", "1.5h", seconds) covering training and the final validation.
        iterations_per_epoch: optimizer steps per epoch.
        batch_size, patch_size: overrides of the plan's values.
        spatial_dims: force 2 (slices) or 3; None follows the model.
        context_slices: neighbouring slices per side stacked as channels for 2D networks.
        optimizer: "sgd", "adam", "adamw" or "rmsprop"; ``lr`` None picks a per-optimizer default.
        weight_decay, momentum: optimizer settings (momentum for SGD/RMSprop).
        schedule: "poly", "cosine" (with ``warmup_epochs``), "step" (``step_size``, ``gamma``),
            "plateau" (``plateau_patience``, ``gamma``) or "constant".
        grad_clip: max gradient norm; None or 0 disables clipping.
        loss: name for :func:`medzoo.losses.create_loss`.
        regions: when the dataset declares regions (the ``brats`` layout's WT/TC/ET, an nnU-Net v2 region
            dataset.json, the ``regions`` layout option), train one sigmoid output per region with BCE + Dice
            (:mod:`medzoo.engine.regions`); False trains a softmax over the classes.
        augment: training augmentation (:func:`medzoo.transforms.augment.build_augmentation`): "standard"
            (rotation, scaling, mirroring, gamma, noise), "default" (nnU-Net's set: also blur, brightness,
            contrast, low resolution, inverted gamma), "strong", "none", or "auto": "standard" for a run
            expected to take at most ``LIGHT_AUGMENT_MAX_STEPS`` steps (from ``epochs`` or, under a time
            budget, from the budget and the probed step time), "default" for longer runs, where the lighter
            set learns faster in short runs (docs/benchmarks.md).
        amp: autocast precision of training steps and validations: "auto" (CUDA: bf16 if supported, else
            fp16; CPU: bf16 where the CPU has native bf16 instructions, which run it faster, else fp32), "bf16", "fp16" (CUDA only) or "none" (fp32). Weights, optimizer and loss stay fp32.
        memory_format: memory layout of the network's weights and input batches: "channels_last"
            (``channels_last_3d`` for 3D networks), "contiguous" (PyTorch's default) or "auto": channels-last on
            the CPU for the networks whose card says it trains faster so (``ModelCard.channels_last``), else
            contiguous. Results are the same up to
            floating-point rounding.
        val_every: validate every N epochs (and always after the last one).
        val_time_fraction: under a ``time_budget``, skip an intermediate validation that would bring the time
            spent validating above this fraction of the time so far (None or 0: never skip). Keeps slow
            validations (many windows per case) from eating the training time.
        val_overlap: sliding-window overlap during validation.
        final_tta: the final validation mirrors every spatial axis (test-time augmentation, what
            ``medzoo predict --tta`` does) when that costs at most 20 % of the time budget; its Dice is the
            run's final score.
        max_val_cases: validate on at most this many validation cases (None: all).
        patience: early stopping after this many validations without improvement (None: off).
        seed, deterministic: reproducibility (deterministic uses ``torch.use_deterministic_algorithms``).
        compile: run the training steps through ``torch.compile`` (validation stays eager); None reads the
            ``MEDZOO_COMPILE`` environment variable. Off by default: the gain per step is small on CPUs and
            compiling takes a while, so it pays only in long runs. If
            compiling fails (e.g. no C++ compiler), training goes on without it.
        plan_for_budget: under a ``time_budget``, let the planner fit spacing, patch, batch and network width
            to the budget (:mod:`medzoo.planning.budgeting`, ``docs/planner.md``); False keeps the budget-free
            plan and the budget only stops the run in time.
        fold, folds: k-fold cross-validation; ``folds`` 1 means a single 80/20 split.
        num_workers: data loader workers.
        device: "cpu", "cuda", "cuda:1"...; None picks CUDA when available.
        init_from: checkpoint whose matching weights initialise the network.
        freeze: parameter-name prefixes (or "encoder") to freeze.
        checkpoint_every: write ``checkpoint_last.pt`` every N epochs.
        cache_dir: where preprocessed cases are cached (None: ``<out>/cache``).
        plan_overrides: extra :func:`medzoo.planning.planner.make_plan` overrides.
        progress: show a progress bar.
        log_images: write a validation overlay image to TensorBoard.
    """

    data: str | None = None
    out: str = "runs/run"
    layout: str | None = None
    layout_options: dict[str, Any] = field(default_factory=dict)
    task: str = "segment"
    model: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int | None = None
    time_budget: str | float | None = None
    plan_for_budget: bool = True
    iterations_per_epoch: int = 50
    batch_size: int | None = None
    patch_size: tuple[int, ...] | None = None
    spatial_dims: int | None = None
    context_slices: int = 0
    optimizer: str = "adamw"
    lr: float | None = None
    weight_decay: float = 3e-5
    momentum: float = 0.99
    schedule: str = "poly"
    warmup_epochs: int = 0
    step_size: int = 30
    gamma: float = 0.1
    plateau_patience: int = 5
    grad_clip: float | None = 12.0
    loss: str = "dice_ce"
    regions: bool = True
    augment: str = "auto"
    amp: str = "auto"
    memory_format: str = "auto"
    val_every: int = 1
    val_time_fraction: float | None = 0.05
    val_overlap: float = 0.5
    final_tta: bool = True
    max_val_cases: int | None = None
    patience: int | None = None
    seed: int = 0
    deterministic: bool = False
    compile: bool | None = None
    fold: int = 0
    folds: int = 1
    num_workers: int = 1
    device: str | None = None
    init_from: str | None = None
    freeze: list[str] = field(default_factory=list)
    checkpoint_every: int = 1
    cache_dir: str | None = None
    plan_overrides: dict[str, Any] = field(default_factory=dict)
    progress: bool = True
    log_images: bool = True

    def __post_init__(self) -> None:
        if self.patch_size is not None:
            self.patch_size = tuple(int(p) for p in self.patch_size)
        if isinstance(self.freeze, str):
            self.freeze = [self.freeze]
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` for values that cannot work."""
        checks = [
            (self.task in TASKS, f"task must be one of {TASKS}, got '{self.task}'"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got '{self.optimizer}'"),
            (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}, got '{self.schedule}'"),
            (self.amp in AMP_MODES, f"amp must be one of {AMP_MODES}, got '{self.amp}'"),
            (self.memory_format in MEMORY_FORMATS,
             f"memory_format must be one of {MEMORY_FORMATS}, got '{self.memory_format}'"),
            (self.augment in AUGMENTS, f"augment must be one of {AUGMENTS}, got '{self.augment}'"),
            (self.epochs is None or self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.iterations_per_epoch >= 1, "iterations_per_epoch must be >= 1"),
            (self.val_every >= 1, "val_every must be >= 1"),
            (self.checkpoint_every >= 1, "checkpoint_every must be >= 1"),
            (self.folds >= 1, f"folds must be >= 1, got {self.folds}"),
            (0 <= self.fold < max(self.folds, 1), f"fold must be in 0..{self.folds - 1}, got {self.fold}"),
            (self.lr is None or self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.batch_size is None or self.batch_size >= 1, "batch_size must be >= 1"),
            (self.spatial_dims in (None, 2, 3), f"spatial_dims must be 2 or 3, got {self.spatial_dims}"),
            (self.context_slices >= 0, "context_slices must be >= 0"),
            (0 <= self.val_overlap < 1, "val_overlap must be in [0, 1)"),
            (self.val_time_fraction is None or 0 <= self.val_time_fraction <= 1,
             "val_time_fraction must be in [0, 1]"),
            (self.patience is None or self.patience >= 1, "patience must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.time_budget is not None:
            parse_duration(self.time_budget)

    @property
    def budget_seconds(self) -> float | None:
        """The time budget in seconds, or None."""
        return None if self.time_budget is None else parse_duration(self.time_budget)

    @property
    def max_epochs(self) -> int:
        """Epoch limit: ``epochs``, else effectively unbounded under a time budget, else 50."""
        if self.epochs is not None:
            return self.epochs
        return 1_000_000 if self.time_budget is not None else 50

    @property
    def learning_rate(self) -> float:
        """``lr`` or the optimizer's default."""
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        d = asdict(self)
        if d["patch_size"] is not None:
            d["patch_size"] = list(d["patch_size"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are rejected."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown training settings {sorted(unknown)}")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        """Write as JSON, atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a config written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no config.json (is this a medzoo run folder?)")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON ({err})") from err
