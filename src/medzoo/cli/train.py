"""``medzoo train``: train a network on a dataset folder (or resume a run)."""

from __future__ import annotations

import argparse

from medzoo.cli.options import add_layout_options, key_value
from medzoo.engine.config import AMP_MODES, AUGMENTS, MEMORY_FORMATS, OPTIMIZERS, SCHEDULES, TASKS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a network (writes a run folder: plan, checkpoints, logs)")
    p.add_argument("--data", help="dataset folder (segmentation) or CSV of volumes and labels (classify)")
    p.add_argument("--out", help="run folder to create")
    p.add_argument("--resume", metavar="RUN", help="continue the run in this folder from its last checkpoint")
    p.add_argument("--layout", help="dataset layout (default: auto-detect)")
    add_layout_options(p)
    p.add_argument("--task", choices=TASKS, default="segment")
    p.add_argument("--model", help="network name (see `medzoo models`; default: the planner's choice)")
    p.add_argument("--model-arg", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="network argument override (value read as JSON if possible), repeatable")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--epochs", type=int, help="number of epochs (default 50)")
    g.add_argument("--time-budget", help="wall-clock budget incl. final validation, e.g. 10m, 1.5h")
    p.add_argument("--plan-for-budget", action=argparse.BooleanOptionalAction, default=True,
                   help="fit spacing, patch, batch and network width to --time-budget (see `medzoo plan`; "
                        "default); --no-plan-for-budget keeps the budget-free plan and only stops in time")
    p.add_argument("--iterations", type=int, default=50, help="optimizer steps per epoch (default 50)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--patch-size", type=int, nargs="+", metavar="N")
    p.add_argument("--spatial-dims", type=int, choices=[2, 3], help="force 2D (slices) or 3D training")
    p.add_argument("--context-slices", type=int, default=0, help="2D: neighbouring slices per side as channels")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw")
    p.add_argument("--lr", type=float, help="learning rate (default per optimizer)")
    p.add_argument("--weight-decay", type=float, default=3e-5)
    p.add_argument("--schedule", choices=SCHEDULES, default="poly")
    p.add_argument("--warmup-epochs", type=int, default=0)
    p.add_argument("--grad-clip", type=float, default=12.0, help="max gradient norm (0: off)")
    p.add_argument("--loss", default="dice_ce")
    p.add_argument("--no-regions", action="store_true",
                   help="train a softmax over the classes even when the dataset declares regions (default: one "
                        "sigmoid output per region with BCE+Dice)")
    p.add_argument("--augment", choices=AUGMENTS, default="auto",
                   help="training augmentation (auto: the light 'standard' set for runs of up to 10k steps, "
                        "nnU-Net's 'default' set beyond)")
    p.add_argument("--amp", choices=AMP_MODES, default="auto",
                   help="autocast precision; auto: bf16 on CUDA and on CPUs with native bf16, else fp32 (default)")
    p.add_argument("--memory-format", choices=MEMORY_FORMATS, default="auto",
                   help="memory layout of weights and batches; auto: channels-last on the CPU for networks that "
                        "train faster so (unet3d, unet2d, dynunet, ...), else contiguous (default)")
    p.add_argument("--val-every", type=int, default=1, help="validate every N epochs")
    p.add_argument("--no-final-tta", action="store_true",
                   help="final validation without mirroring test-time augmentation (default: with, when it "
                        "costs at most 20%% of the time budget)")
    p.add_argument("--max-val-cases", type=int, help="validate on at most this many cases")
    p.add_argument("--patience", type=int, help="early stopping after N validations without improvement")
    p.add_argument("--fold", nargs="+", default=["0"], metavar="K",
                   help="with --folds k: one fold trains into --out itself; several (0 1 ...) or 'all' run a "
                        "cross-validation into --out/fold_K with out-of-fold Dice in --out/crossval.json")
    p.add_argument("--folds", type=int, default=1, help="k for k-fold cross-validation (1: one 80/20 split)")
    p.add_argument("--ignore-label", type=int, metavar="V",
                   help="label value of unannotated voxels (sparse labels): no loss, no metric, no patch centre")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms (slower)")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the training steps (MEDZOO_COMPILE=1 does the same; pays only in long runs "
                        "after up to a minute of compiling: `python -m benchmarks.training_step --compile` "
                        "measures yours)")
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA if available)")
    p.add_argument("--init-from", metavar="CKPT", help="initialise matching weights from a checkpoint")
    p.add_argument("--freeze", nargs="+", default=[], metavar="PREFIX", help="freeze 'encoder' or prefixes")
    p.add_argument("--cache-dir", help="preprocessed-case cache (default: RUN/cache)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (where the output is not a terminal there is none: one line per epoch)")
    p.add_argument("--log-file", metavar="PATH", help="also write the log lines (one per epoch, ...) to this file")
    p.set_defaults(func=run)


def run(ns: argparse.Namespace) -> int:
    from medzoo import runtime
    from medzoo.logs import log_file

    main_rank = runtime.distributed_env().rank == 0  # under torchrun only rank 0 writes the file
    with log_file(ns.log_file if main_rank else None):
        return _run(ns)


def _run(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from medzoo import runtime
    from medzoo.engine.config import TrainConfig
    from medzoo.engine.trainer import train
    from medzoo.errors import ConfigError

    folds = _folds(ns.fold, ns.folds)
    if ns.resume:
        config = TrainConfig.load(Path(ns.resume) / "config.json")
        result = train(config, resume=True)
    else:
        if not ns.data or not ns.out:
            raise ConfigError("--data and --out are required (or --resume RUN)")
        layout_options = dict(ns.layout_option)
        if ns.ignore_label is not None:
            layout_options["ignore_label"] = ns.ignore_label
        config = TrainConfig(
            data=ns.data, out=ns.out, layout=ns.layout, task=ns.task, model=ns.model,
            model_kwargs=dict(ns.model_arg), layout_options=layout_options, epochs=ns.epochs,
            time_budget=ns.time_budget, plan_for_budget=ns.plan_for_budget, iterations_per_epoch=ns.iterations, batch_size=ns.batch_size,
            patch_size=tuple(ns.patch_size) if ns.patch_size else None, spatial_dims=ns.spatial_dims,
            context_slices=ns.context_slices, optimizer=ns.optimizer, lr=ns.lr, weight_decay=ns.weight_decay,
            schedule=ns.schedule, warmup_epochs=ns.warmup_epochs, grad_clip=ns.grad_clip or None,
            loss=ns.loss, regions=not ns.no_regions, augment=ns.augment, amp=ns.amp, memory_format=ns.memory_format, val_every=ns.val_every,
            final_tta=not ns.no_final_tta,
            max_val_cases=ns.max_val_cases,
            patience=ns.patience, fold=folds[0], folds=ns.folds, seed=ns.seed, deterministic=ns.deterministic,
            compile=ns.compile,
            num_workers=ns.num_workers, device=ns.device, init_from=ns.init_from, freeze=list(ns.freeze),
            cache_dir=ns.cache_dir, progress=not ns.no_progress,
        )
        if len(folds) > 1 or ns.fold == ["all"]:
            return _cross_validate(config, folds)
        result = train(config)
    if runtime.distributed_env().rank == 0:  # under torchrun only rank 0 reports
        metric = "accuracy" if config.task == "classify" else "mean foreground Dice"
        print(
            f"trained {result.epochs} epochs ({result.steps} steps, {result.seconds:.0f} s, "
            f"stopped by {result.stop_reason}); best {metric} {result.best_metric:.4f} "
            f"at epoch {result.best_epoch}; run folder: {result.run_dir}"
        )
    return 0


def _folds(values: list[str], k: int) -> list[int]:
    """``--fold`` values as fold numbers (``all``: 0..k-1)."""
    from medzoo.errors import ConfigError

    if values == ["all"]:
        if k < 2:
            raise ConfigError("--fold all needs --folds k with k >= 2")
        return list(range(k))
    try:
        folds = [int(v) for v in values]
    except ValueError:
        raise ConfigError(f"--fold takes fold numbers or 'all', got {' '.join(values)}") from None
    if len(folds) > 1 and k < 2:
        raise ConfigError("several --fold values need --folds k with k >= 2")
    return folds


def _cross_validate(config, folds: list[int]) -> int:
    from medzoo.engine.crossval import cross_validate

    result = cross_validate(config, folds)
    if result is not None:  # rank 0
        print(result.table())
        print(f"cross-validation of {len(result.folds)} fold(s) in {result.seconds:.0f} s: "
              f"{result.run_dir / 'crossval.json'}")
    return 0
