"""Segmentation as a training task: patches from preprocessed cases, Dice+CE, sliding-window Dice.

:meth:`SegmentationTask.prepare` plans the run (or reloads ``plan.json`` on resume), splits the cases and
caches them preprocessed; each epoch draws patches from this rank's training cases through the
:class:`~medzoo.data.loader.PatchLoader`; validation predicts every validation case by sliding window and
reports Dice per class on the preprocessed grid.

A dataset that declares regions trains one sigmoid output per region (:mod:`medzoo.engine.regions`: the
plan's outputs, BCE + Dice, Dice per region) unless ``config.regions`` is False; a dataset with an ignore
label masks its unannotated voxels out of the loss and the validation Dice.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medzoo import logs
from medzoo.engine import distributed, regions
from medzoo.engine.budget import Budget, calibrate_budget, estimate_validation_seconds
from medzoo.engine.config import TrainConfig
from medzoo.engine.splits import load_splits, make_splits, save_splits
from medzoo.engine.tasks import Task, Validation
from medzoo.engine.validation import ValidationResult, validate
from medzoo.errors import DataError
from medzoo.planning.plan import Plan

log = logging.getLogger(__name__)

LIGHT_AUGMENT_MAX_STEPS = 10_000  # "auto" picks the light set for runs expected to take at most this many steps


def plan_for(config: TrainConfig, info: Any, progress: bool = True, device: torch.device | str = "cpu") -> Plan:
    """The plan of a new run: the planner's choice from the dataset's fingerprint, with ``config``'s overrides;
    under a time budget, priced by steps on ``device``."""
    from medzoo.planning.planner import make_plan

    fingerprint = None
    try:
        from medzoo.planning.fingerprint import compute_fingerprint

        fingerprint = compute_fingerprint(info, progress=progress)
    except ImportError:
        log.debug("no fingerprint module; the planner reads the geometry itself")
    overrides = dict(config.plan_overrides)
    overrides.update(model=config.model, patch_size=config.patch_size, batch_size=config.batch_size,
                     spatial_dims=config.spatial_dims)
    if config.model_kwargs:
        overrides["model_kwargs"] = dict(config.model_kwargs)
    if config.context_slices:
        overrides["context_slices"] = config.context_slices
    fit_budget = config.plan_for_budget and config.epochs is None
    budget = config.budget_seconds if fit_budget else None
    profile = None
    if budget is not None:
        from medzoo.planning.device import device_profile

        profile = device_profile(str(device))
    plan = make_plan(info, fingerprint, time_budget=budget, device_profile=profile, **overrides)
    return regions.region_plan(plan, info) if config.regions else plan


def make_loader(plan: Plan, cases: list, config: TrainConfig, seed: int, augment: str):
    """The training patch loader of one epoch, with the augmentation :func:`resolve_augment` chose."""
    from medzoo.data.loader import PatchLoader

    return PatchLoader(
        cases, plan.patch_size, plan.batch_size, spatial_dims=plan.spatial_dims, seed=seed,
        num_workers=config.num_workers, slice_axis=plan.slice_axis, context_slices=plan.context_slices,
        augment=augment, mirror_axes=plan.mirror_axes,
    )


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


def validation_logs(result: ValidationResult, plan: Plan) -> dict[str, float]:
    """``val_dice_mean`` and ``val_dice_<class name>`` of a validation."""
    figures = {"val_dice_mean": result.mean_foreground_dice}
    for k, name in plan.foreground_labels.items():
        figures[f"val_dice_{name}"] = float(result.dice_per_class[k])
    return figures


class SegmentationTask(Task):
    """Patches in, logits per voxel out; the best checkpoint has the best mean foreground Dice."""

    legacy_augment = "default"  # checkpoints written before the augment setting were trained with nnU-Net's set

    def prepare(self, run_dir: Path, resume: bool, dist_info: distributed.DistInfo, device: torch.device) -> Plan:
        """Plan (or reload it), split, cache the preprocessed cases; rank 0 writes, the others wait and read."""
        from medzoo.data.cache import build_cache
        from medzoo.data.layouts import load_dataset
        from medzoo.losses import DeepSupervisionLoss

        config, self.device, self.dist = self.config, device, dist_info
        show_bars = config.progress and logs.interactive()
        info = load_dataset(config.data, layout=config.layout, **config.layout_options)
        if not resume and dist_info.is_main:
            plan_for(config, info, progress=show_bars, device=device).save(run_dir / "plan.json")
            ids = [c.case_id for c in info.cases]
            save_splits(make_splits(ids, folds=config.folds, seed=config.seed), run_dir / "splits.json",
                        seed=config.seed, fold=config.fold)
        if not resume:
            distributed.barrier()
        plan = Plan.load(run_dir / "plan.json")
        split = load_splits(run_dir / "splits.json")[config.fold if config.folds > 1 else 0]
        by_id = {c.case_id: c for c in info.cases}
        missing = [i for i in split["train"] + split["val"] if i not in by_id]
        if missing:
            raise DataError(f"{config.data}: cases {missing[:5]} of splits.json are not in the dataset")
        cache_dir = Path(config.cache_dir) if config.cache_dir else run_dir / "cache"
        wanted = split["train"] + split["val"]
        if dist_info.is_main:
            cached = build_cache(info, plan, cache_dir, cases=wanted, progress=show_bars)
        distributed.barrier()
        if not dist_info.is_main:
            cached = build_cache(info, plan, cache_dir, cases=wanted, progress=False)  # reads rank 0's files
        cached_by_id = {c.case_id: c for c in cached}
        val_cases = [cached_by_id[i] for i in split["val"]][: config.max_val_cases]
        self.train_cases = distributed.shard([cached_by_id[i] for i in split["train"]], dist_info)
        self.val_cases = distributed.shard(val_cases, dist_info)
        self.plan = plan
        names = list(plan.regions) if plan.regions is not None else list(plan.foreground_labels.values())
        self.metric_columns = (["val_dice_mean"] + [f"val_dice_{n}" for n in names]
                               + ["data_wait_fraction"])  # fmt: skip
        self.tta_factor = 2**plan.spatial_dims
        self.plain_loss = regions.training_loss(config.loss, plan, ignore=info.ignore_label is not None)
        self.deep_loss = DeepSupervisionLoss(self.plain_loss)  # for networks that return a list in train mode
        return plan

    def batches(self, seed: int, augment: str | None):
        return make_loader(self.plan, self.train_cases, self.config, seed, augment)

    def loss(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        # in fp32 whatever the network computed in: softmax and Dice sums lose too much in bf16
        if isinstance(output, (list, tuple)):
            return self.deep_loss([o.float() for o in output], target)
        return self.plain_loss(output.float(), target)

    def validate(self, model: nn.Module, mirror: bool, keep_example: bool) -> Validation:
        axes = self.plan.allowed_mirror_axes if mirror else None
        if self.plan.regions is not None:
            result = regions.validate_regions(model, self.val_cases, self.plan, self.device,
                                              overlap=self.config.val_overlap, keep_example=keep_example,
                                              mirror_axes=axes)  # fmt: skip
            return Validation(regions.validation_logs(result, self.plan), result.mean_foreground_dice, result.example)
        result = validate(model, self.val_cases, self.plan, self.device, overlap=self.config.val_overlap,
                          keep_example=keep_example, mirror_axes=axes)
        return Validation(validation_logs(result, self.plan), result.mean_foreground_dice, result.example)

    def calibrate(self, budget: Budget, model: nn.Module, optimizer: torch.optim.Optimizer) -> bool:
        window = calibrate_budget(budget, model, optimizer, self.plan, self.val_cases, self.device,
                                  self.config.val_overlap)
        return window is not None

    def estimate_validation(self, budget: Budget) -> None:
        # a step is about 2.5 forward passes of its batch: cost a validation window from it
        plan = self.plan
        per_voxel = budget.step_time / 2.5 / (plan.batch_size * math.prod(plan.patch_size))
        budget.val_estimate = estimate_validation_seconds(per_voxel, plan, self.val_cases, self.config.val_overlap)

    def after_training(self, budget: Budget) -> None:
        # the planner's price of a step against the steps this run measured (data waits included)
        price = self.plan.extra.get("step_price")
        if isinstance(price, dict) and budget.step_time > 0:
            from medzoo.planning.device import correct_step_price

            correct_step_price(str(price.get("network")), float(price.get("step_seconds", 0.0)), budget.step_time,
                               device=str(self.device))

    def choose_augment(self, budget: Budget, probed: bool) -> str | None:
        choice = resolve_augment(self.config, budget, probed)
        # every rank the same: the light set only if every rank's estimate chose it
        if self.config.augment == "auto" and distributed.any_rank(choice != "standard", self.dist, self.device):
            choice = "default"
        return choice
