"""medzoo's fused CPU kernels on and off: whole training steps with the norm kernel against PyTorch's ops.

:mod:`medzoo.accel.kernels` fuses instance / group norm with the (leaky) ReLU after it; without a C++ compiler, or
with ``MEDZOO_FUSED_KERNELS=0``, the same layers run on PyTorch's ops (the fallback). This benchmark times one
training step (forward, cross-entropy, backward, SGD as ``medzoo train`` builds it) of each network both ways,
interleaved in one process with medzoo's malloc setting, in the layout ``medzoo train`` picks on the CPU
(:func:`benchmarks.common.in_training_layout`), in fp32 and (where the CPU has native bf16, or with
``--bf16``) under bf16 autocast:

* nnU-Net's network (``dynunet``, instance norm + leaky ReLU) at 1x1x64^3 and on hippocampus patches
  (2x1x40x56x40), the two workloads of :mod:`benchmarks.training_step`;
* ``unet3d`` (instance norm + leaky ReLU), ``segresnet`` and ``resnet3d_vae`` (group norm + ReLU) at 1x1x64^3.

``speedup`` = fallback seconds / kernel seconds (> 1: the kernel is faster).

Run: ``python -m benchmarks.kernels [--quick] [--reps N] [--threads N] [--[no-]bf16]``.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

import torch

from benchmarks.common import (
    apply_threads,
    environment,
    format_table,
    in_training_layout,
    interleaved,
    make_parser,
    markdown_table,
    median,
    ratio,
    reps_for,
    with_fused_kernels,
    write_results,
)

NAME = "kernels"
SIDES = {"kernel": True, "pytorch_ops": False}  # fused kernels on / off


def networks(quick: bool) -> list[tuple[str, str, torch.nn.Module, torch.Tensor, torch.Tensor]]:
    """(workload name, card name, network, input, target) for each network timed."""
    from benchmarks.models import build
    from benchmarks.training_step import build_pair, workloads

    out = []
    gen = torch.Generator().manual_seed(0)
    for cfg in workloads(quick):
        x = torch.randn(*cfg["shape"], generator=gen)
        y = torch.randint(0, 3, (cfg["shape"][0], *cfg["shape"][2:]), generator=gen)
        out.append((f"dynunet {cfg['name']}", "dynunet", build_pair(cfg)[0], x, y))
    for name in ("unet3d", "segresnet", "resnet3d_vae"):
        model, x, y = build(name, quick)
        out.append((f"{name} {'x'.join(map(str, x.shape))}", name, model, x, y))
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = make_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="also time bf16 autocast (default: where the CPU has native bf16)")
    args = parser.parse_args(argv)
    threads = apply_threads(args.threads)
    reps = reps_for(args, default=5, quick=2)
    from benchmarks.training_step import make_step
    from medzoo.runtime import cpu_has_native_bf16, fused_kernels, tune_malloc

    tune_malloc(True)  # as medzoo train runs
    results: dict[str, Any] = {"benchmark": NAME, "environment": environment(), "threads": threads, "reps": reps}
    if fused_kernels() is None:
        print(f"== {NAME}: the fused kernel is not available here (no C++ compiler, it failed to build, or "
              "MEDZOO_FUSED_KERNELS=0)")
        results.update(skipped="kernel unavailable", rows=[])
        print(f"wrote {write_results(NAME, results, args.out)}")
        return results
    with_bf16 = cpu_has_native_bf16() if args.bf16 is None else args.bf16
    precisions = {"fp32": None, **({"bf16": torch.bfloat16} if with_bf16 else {})}
    rows: list[dict[str, Any]] = []
    for workload, card, net, x, y in networks(args.quick):
        net, x, layout = in_training_layout(net, x, card)
        for precision, dtype in precisions.items():
            work = {side: with_fused_kernels(make_step(copy.deepcopy(net), x, y, dtype, medzoo_optimizer=True), on)
                    for side, on in SIDES.items()}
            times = interleaved(work, reps=reps, warmup=max(1, args.warmup))
            med = {side: median(t) for side, t in times.items()}
            rows.append({"workload": workload, "precision": precision, "layout": layout,
                         "kernel_s": med["kernel"], "pytorch_ops_s": med["pytorch_ops"],
                         "speedup": ratio(med["pytorch_ops"], med["kernel"])})
            print(f"  {workload} {precision}: {rows[-1]['speedup']:.3f}x", flush=True)
    cols = ["workload", "precision", "layout", "kernel_s", "pytorch_ops_s", "speedup"]
    print(f"== {NAME}: training step with the fused norm kernel vs PyTorch's ops, {threads} threads, {reps} reps "
          "(speedup > 1: the kernel is faster)")
    print(format_table(rows, cols))
    results.update(rows=rows, markdown=markdown_table(rows, cols))
    print(f"wrote {write_results(NAME, results, args.out)}")
    return results


if __name__ == "__main__":
    main()
