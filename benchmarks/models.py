"""Forward and training step of the zoo's main models: seconds, achieved GFLOP/s and % of the conv3d peak.

Every registered model among :data:`MAIN_MODELS` (whatever is registered when it runs) is built with
``in_channels=1, num_classes=3`` and timed on one patch: forward (no grad) and one training step (forward,
cross-entropy, backward, SGD), in fp32 and PyTorch's default layout. FLOPs come from
``torch.utils.flop_counter.FlopCounterMode``. The reference peak is a 32->32 3x3x3 convolution on 64^3, timed in
the same interleaved rounds. Each model's training step is also timed as ``medzoo train`` runs it on this CPU
("trained" columns): the memory layout its card asks for (:func:`medzoo.runtime.preferred_memory_format`), bf16
autocast where the CPU has native bf16 (then against the reference conv in bf16, ``trained_pct_peak``) and
the fused CPU optimizer of ``medzoo train``, with
``trained_speedup`` = fp32 default-layout step / this step. With ``--memory`` each workload also runs in a fresh
subprocess to read its peak resident memory (VmHWM).

Run: ``python -m benchmarks.models [--quick] [--reps N] [--only-models unet3d,dynunet] [--memory]``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from benchmarks.common import (
    apply_threads,
    conv_peak_workload,
    count_flops,
    environment,
    format_table,
    in_training_layout,
    interleaved,
    make_parser,
    markdown_table,
    median,
    peak_rss_mb_subprocess,
    reps_for,
    sgd,
    write_results,
)

NAME = "models"
MAIN_MODELS = ("unet3d", "dynunet", "segresnet", "vnet", "deeplabv3plus_resnet18", "highresnet3d",
               "resnet3d_vae", "densevoxelnet")
logger = logging.getLogger(__name__)


def patch_for(card: Any, quick: bool) -> tuple[int, ...]:
    """A cubic patch the model accepts: 64^3 (16^3-ish with --quick), rounded to the card's size rule."""
    base = 16 if quick else 64
    return tuple(card.valid_size(base) for _ in range(3))


def build(name: str, quick: bool) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Model (tiny variant with ``quick``), input (1, 1, *P) and integer target (1, *P)."""
    from medzoo.models import create_model, get_card

    card = get_card(name)
    kwargs = dict(card.tiny_kwargs) if quick else {}
    model = create_model(name, in_channels=1, num_classes=3, spatial_dims=3, **kwargs)
    patch = patch_for(card, quick)
    gen = torch.Generator().manual_seed(0)
    return model, torch.randn(1, 1, *patch, generator=gen), torch.randint(0, 3, (1, *patch), generator=gen)


def _logits(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (list, tuple)) else out


def _autocast(x: torch.Tensor, dtype: torch.dtype | None):
    return torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def make_forward(model: nn.Module, x: torch.Tensor, dtype: torch.dtype | None = None):
    """Inference forward pass (no grad) as a zero-argument callable; ``dtype``: autocast to it."""
    model.eval()

    def fwd() -> None:
        with torch.no_grad(), _autocast(x, dtype):
            model(x)

    return fwd


def make_train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype | None = None,
               medzoo_optimizer: bool = False):
    """One SGD training step (cross-entropy, plus the model's auxiliary loss) as a zero-argument callable;
    ``dtype``: autocast the forward to it, loss in fp32, fp16 with a ``GradScaler``. ``medzoo_optimizer``: SGD
    as ``medzoo train`` builds it (fused on the CPU, :func:`medzoo.engine.trainer.fused_optimizer_options`),
    else PyTorch's default."""
    opt = sgd(model, medzoo_optimizer, lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler(x.device.type, enabled=dtype == torch.float16)

    def step() -> None:
        model.train()
        with _autocast(x, dtype):
            out = _logits(model(x))
        loss = nn.functional.cross_entropy(out.float(), y)
        aux = model.auxiliary_loss() if hasattr(model, "auxiliary_loss") else None
        if aux is not None:
            loss = loss + aux.float()
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return step


_MEMORY_CODE = """
import torch
from benchmarks.models import build, make_forward, make_train
torch.set_num_threads({threads})
m, x, y = build({name!r}, {quick})
f = make_forward(m, x) if {mode!r} == "forward" else make_train(m, x, y)
f(); f()
"""


def main(argv: list[str] | None = None) -> dict:
    parser = make_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--only-models", default=None, help="comma-separated model names")
    parser.add_argument("--memory", action="store_true", help="peak RSS per workload (fresh subprocess each)")
    args = parser.parse_args(argv)
    threads = apply_threads(args.threads)
    reps = reps_for(args, default=3, quick=1)
    from medzoo.models import list_models

    wanted = args.only_models.split(",") if args.only_models else list(MAIN_MODELS)
    if args.quick and not args.only_models:
        wanted = ["unet3d", "dynunet"]
    registered = set(list_models())
    names = [n for n in wanted if n in registered]
    missing = [n for n in wanted if n not in registered]
    from medzoo.runtime import cpu_has_native_bf16

    peak_fn, peak_flops = conv_peak_workload(args.quick)
    trained_dtype = torch.bfloat16 if cpu_has_native_bf16() else None
    peaks = {"peak": peak_fn}
    if trained_dtype is not None:
        peaks["peak_bf16"] = conv_peak_workload(args.quick, trained_dtype)[0]

    rows = []
    for name in names:
        try:
            model, x, y = build(name, args.quick)
            fwd, step = make_forward(model, x), make_train(model, x, y)
            f_flops, t_flops = count_flops(fwd), count_flops(step)
            trained_net, trained_x = build(name, args.quick)[:2]
            trained_net, trained_x, layout = in_training_layout(trained_net, trained_x, name)
            trained = make_train(trained_net, trained_x, y, trained_dtype, medzoo_optimizer=True)
            times = interleaved({"forward": fwd, "train": step, "trained": trained, **peaks}, reps=reps,
                                warmup=args.warmup)  # fmt: skip
        except Exception as err:  # noqa: BLE001 - one broken model must not stop the table
            logger.warning("model %s failed: %s", name, err)
            rows.append({"model": name, "skipped": f"{type(err).__name__}: {err}"[:200]})
            continue
        med = {k: median(v) for k, v in times.items()}
        peak = peak_flops / med["peak"] / 1e9
        row: dict[str, Any] = {
            "model": name,
            "patch": "x".join(str(s) for s in x.shape[2:]),
            "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
            "forward_s": med["forward"],
            "train_s": med["train"],
            "forward_gflops": f_flops / med["forward"] / 1e9,
            "train_gflops": t_flops / med["train"] / 1e9,
            "conv_peak_gflops": peak,
            "train_pct_peak": 100.0 * t_flops / med["train"] / 1e9 / peak,
            "trained_as": f"{'bf16' if trained_dtype is not None else 'fp32'} {layout}",
            "trained_s": med["trained"],
            "trained_speedup": med["train"] / med["trained"],
            "trained_gflops": t_flops / med["trained"] / 1e9,
        }
        trained_peak = peak if trained_dtype is None else peak_flops / med["peak_bf16"] / 1e9
        row["trained_conv_peak_gflops"] = trained_peak
        row["trained_pct_peak"] = 100.0 * t_flops / med["trained"] / 1e9 / trained_peak
        if args.memory:
            for mode in ("forward", "train"):
                code = _MEMORY_CODE.format(threads=threads, name=name, quick=args.quick, mode=mode)
                row[f"{mode}_peak_rss_mb"] = peak_rss_mb_subprocess(code)
        rows.append(row)
    for name in missing:
        rows.append({"model": name, "skipped": "not registered"})
    cols = ["model", "patch", "params_M", "forward_s", "train_s", "forward_gflops", "train_gflops",
            "conv_peak_gflops", "train_pct_peak", "trained_as", "trained_s", "trained_speedup", "trained_gflops",
            "trained_pct_peak"]
    if args.memory:
        cols += ["forward_peak_rss_mb", "train_peak_rss_mb"]
    cols.append("skipped")
    print(f"== {NAME}: forward / training step per model, medians of {reps}, {threads} threads")
    print(format_table(rows, cols))
    results = {"benchmark": NAME, "environment": environment(), "threads": threads, "reps": reps, "rows": rows,
               "markdown": markdown_table(rows, cols)}
    print(f"wrote {write_results(NAME, results, args.out)}")
    return results


if __name__ == "__main__":
    main()
