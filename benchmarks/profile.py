"""Where a training step's time goes: torch.profiler over a few steps of dynunet and unet3d.

Each model is profiled twice: in fp32 and PyTorch's default layout, and as ``medzoo train`` runs it on this CPU
(its memory format, :func:`medzoo.runtime.preferred_memory_format`, and bf16 autocast where the CPU has native
bf16).

CPU self-time of every aten op (and of medzoo's fused norm kernel, :mod:`medzoo.accel.kernels`) is grouped as
convolutions, normalisation, activations, copies (copy_, cat, contiguous, CopySlices ...), optimizer (SGD
step) and other, and printed as a table (share of the step) and written to ``benchmarks/results/profile.json``.

Run: ``python -m benchmarks.profile [--quick] [--steps N] [--models dynunet,unet3d]``.
"""

from __future__ import annotations

from typing import Any

from torch.profiler import ProfilerActivity, profile

from benchmarks.common import (
    apply_threads,
    environment,
    format_table,
    make_parser,
    markdown_table,
    write_results,
)

NAME = "profile"
GROUPS = ("convolution", "normalisation", "activation", "copies", "optimizer", "other")


def group_of(op: str) -> str:
    """The group an op name belongs to (see module docstring)."""
    name = op.lower()
    if "conv" in name or name in ("aten::mm", "aten::addmm", "aten::bmm"):
        return "convolution"
    if "norm" in name or "var_mean" in name:
        return "normalisation"
    if any(k in name for k in ("relu", "elu", "gelu", "silu", "sigmoid", "threshold", "prelu")):
        return "activation"
    if any(k in name for k in ("copy", "cat", "clone", "contiguous", "as_strided", "copyslices", "pad")):
        return "copies"
    if "_foreach" in name or "sgd" in name or "optimizer" in name:
        return "optimizer"
    return "other"


def profile_model(name: str, quick: bool, steps: int, as_trained: bool = False) -> dict[str, Any]:
    """Profile ``steps`` training steps of a zoo model on one patch; return seconds per group and per step.
    ``as_trained``: in the memory format and precision ``medzoo train`` uses on this CPU, else fp32 contiguous."""
    import torch

    from benchmarks.common import in_training_layout
    from benchmarks.models import build, make_train
    from medzoo.runtime import cpu_has_native_bf16

    model, x, y = build(name, quick)
    if name == "dynunet" and not quick:
        from medzoo.models.dynunet import DynUNet

        model = DynUNet(1, 3, 3, features=(32, 64, 128, 256, 320))
    dtype, layout = None, "contiguous"
    if as_trained:
        dtype = torch.bfloat16 if cpu_has_native_bf16() else None
        model, x, layout = in_training_layout(model, x, name)
    step = make_train(model, x, y, dtype, medzoo_optimizer=as_trained)
    step()  # warm-up (allocations, mkldnn primitive caches)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    seconds = dict.fromkeys(GROUPS, 0.0)
    top: dict[str, float] = {}
    for evt in prof.key_averages():
        if not evt.key.startswith(("aten::", "_Fused")) and "CopySlices" not in evt.key:
            continue  # "_Fused...": medzoo's fused kernels (their own time; the aten ops inside count apart)
        self_s = evt.self_cpu_time_total / 1e6
        seconds[group_of(evt.key)] += self_s
        top[evt.key] = top.get(evt.key, 0.0) + self_s
    total = sum(seconds.values()) or float("nan")
    row: dict[str, Any] = {"model": name, "patch": "x".join(str(s) for s in x.shape[2:]),
                           "precision": "fp32" if dtype is None else "bf16",
                           "layout": layout,
                           "step_s": total / steps}
    for g in GROUPS:
        row[f"{g}_pct"] = 100.0 * seconds[g] / total
    row["top_ops"] = sorted(((k, v / steps) for k, v in top.items()), key=lambda kv: -kv[1])[:10]
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = make_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="profiled steps (default 3, 1 with --quick)")
    parser.add_argument("--models", default="dynunet,unet3d")
    args = parser.parse_args(argv)
    threads = apply_threads(args.threads)
    steps = args.steps or (1 if args.quick else 3)
    rows = [profile_model(n, args.quick, steps, as_trained) for n in args.models.split(",")
            for as_trained in (False, True)]
    cols = ["model", "patch", "precision", "layout", "step_s"] + [f"{g}_pct" for g in GROUPS]
    print(f"== {NAME}: share of CPU self-time per op group over {steps} training step(s), {threads} threads")
    print(format_table(rows, cols))
    for row in rows:
        print(f"  top ops {row['model']} ({row['precision']}, {row['layout']}): "
              + ", ".join(f"{k} {v:.3f}s" for k, v in row["top_ops"][:5]))
    results = {"benchmark": NAME, "environment": environment(), "threads": threads, "steps": steps, "rows": rows,
               "markdown": markdown_table(rows, cols)}
    print(f"wrote {write_results(NAME, results, args.out)}")
    return results


if __name__ == "__main__":
    main()
