"""Memory layout: ``channels_last_3d`` against PyTorch's default (contiguous NCDHW), op by op and for a whole step.

On the CPU ``medzoo train`` trains the networks whose card says so in channels-last
(:func:`medzoo.runtime.preferred_memory_format`). This benchmark keeps that choice honest: it times, interleaved in
one process, each piece of a U-Net training step in both layouts and in each precision the trainer can pick
(fp32; bf16 autocast where the CPU has native bf16, or with ``--bf16``):

* ``conv``: forward + backward of single 3x3x3 convolutions as they occur in nnU-Net's 64^3 network
  (32->32 and 64->32 at 64^3, the stride-2 32->64 downsampling, 64->64 at 32^3);
* ``norm``: instance norm + leaky ReLU, forward + backward, on a 1x32x64^3 and a 2x32x40x56x40 map, with
  PyTorch's ``instance_norm`` in both layouts, medzoo's layout-keeping ``instance_norm_act`` (its fused kernel
  in both layouts, and in channels-last on PyTorch's ops, the fallback), and (batch of 1) the two channels-last alternatives (``batch_norm`` in training mode, the same maths for a
  batch of 1, and ``group_norm`` with one channel per group);
* ``conv parts``: the forward, the input gradient and the weight gradient of a 32->32 3x3x3 conv on
  2x32x40x56x40 (hippocampus patches' first level) timed apart in both layouts, with GFLOP/s (each part does
  the forward's FLOPs): where a backward pass loses its rate;
* ``conv transpose``: forward + backward of nnU-Net's 2x2x2 stride-2 upsampling with a bias (64->32 on
  2x64x20x28x20), ``nn.ConvTranspose3d`` in both layouts;
* ``group norm``: forward + backward of an 8-group norm on a 2x8x64x64x48 and a 2x32x32x32x24 map (segresnet's
  first levels), PyTorch's ``group_norm`` in both layouts and medzoo's ``GroupNorm`` in channels-last;
* ``step``: the whole training step of nnU-Net's 5-stage network at 1x1x64^3 (module and input converted;
  medzoo's dynunet norm keeps the layout, so this is how ``medzoo train`` runs it on the CPU).

Each row gives the median seconds and ``speedup`` = default-layout seconds / this row's seconds (> 1: faster
than the default layout). Run: ``python -m benchmarks.layouts [--quick] [--reps N] [--threads N] [--[no-]bf16]
[--no-step]``.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import (
    apply_threads,
    environment,
    format_table,
    interleaved,
    make_parser,
    markdown_table,
    median,
    ratio,
    reps_for,
    with_fused_kernels,
    write_results,
)

NAME = "layouts"
CL = torch.channels_last_3d


def _to_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    return t.contiguous(memory_format=CL) if layout == "channels_last" else t.contiguous()


def conv_case(cin: int, cout: int, size: int, stride: int, layout: str, dtype: torch.dtype
              ) -> Callable[[], None]:
    """Forward + backward of one 3x3x3 conv (bias, padding 1) on ``1 x cin x size^3`` in ``layout``."""
    gen = torch.Generator().manual_seed(0)
    conv = nn.Conv3d(cin, cout, 3, stride=stride, padding=1).to(dtype)
    if layout == "channels_last":
        conv = conv.to(memory_format=CL)
    x = _to_layout(torch.randn(1, cin, size, size, size, generator=gen, dtype=dtype), layout).requires_grad_()
    grad = _to_layout(torch.randn_like(conv(x)), layout)

    def run() -> None:
        conv(x).backward(grad)

    return run


CONV_PARTS = ("forward", "grad input", "grad weight")


def conv_part_case(shape: tuple[int, ...], cout: int, part: str, layout: str, dtype: torch.dtype
                   ) -> tuple[Callable[[], None], float]:
    """One part of a 3x3x3 conv (padding 1, no bias) on ``shape`` = (N, Cin, *S) in ``layout``: the forward,
    the input gradient or the weight gradient alone (``aten.convolution_backward`` with one output asked
    for); and its FLOPs (each part does the forward's 2 * Cin * Cout * 27 * voxels)."""
    gen = torch.Generator().manual_seed(0)
    cin = shape[1]
    x = _to_layout(torch.randn(*shape, generator=gen, dtype=dtype), layout)
    w = _to_layout(torch.randn(cout, cin, 3, 3, 3, generator=gen, dtype=dtype), layout)
    gy = _to_layout(torch.randn(shape[0], cout, *shape[2:], generator=gen, dtype=dtype), layout)
    flops = 2.0 * cin * cout * 27 * shape[0] * shape[2] * shape[3] * shape[4]
    if part == "forward":

        def forward() -> None:
            F.conv3d(x, w, padding=1)

        return forward, flops
    mask = [part == "grad input", part == "grad weight", False]

    def run() -> None:
        torch.ops.aten.convolution_backward(gy, x, w, None, [1, 1, 1], [1, 1, 1], [1, 1, 1], False, [0, 0, 0], 1,
                                            mask)  # fmt: skip

    return run, flops


NORM_VARIANTS = ("instance_norm", "instance_norm CL", "medzoo CL", "medzoo CL pytorch ops", "medzoo",
                 "batch_norm CL", "group_norm CL")


def norm_case(shape: tuple[int, ...], variant: str, dtype: torch.dtype) -> Callable[[], None]:
    """Instance norm (affine) + leaky ReLU, forward + backward, on a (B, C, *S) map, as ``variant``:
    ``instance_norm`` in the default layout or channels-last, medzoo's
    :func:`~medzoo.accel.norm.instance_norm_act` in channels-last or the default layout (its fused
    kernel, :mod:`medzoo.accel.kernels`) or in channels-last on PyTorch's ops (``MEDZOO_FUSED_KERNELS=0``, the
    fallback), or channels-last ``batch_norm`` / ``group_norm`` (the same maths for a batch of 1 only)."""
    from medzoo.accel.norm import instance_norm_act

    gen = torch.Generator().manual_seed(0)
    channels = shape[1]
    weight = torch.ones(channels, requires_grad=True)
    bias = torch.zeros(channels, requires_grad=True)
    layout = "default" if variant in ("instance_norm", "medzoo") else "channels_last"
    x = _to_layout(torch.randn(*shape, generator=gen, dtype=dtype), layout)
    x.requires_grad_()
    grad = torch.randn_like(x)
    norms: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "instance_norm": lambda t: F.leaky_relu(F.instance_norm(t, weight=weight, bias=bias, eps=1e-5), 0.01),
        "instance_norm CL": lambda t: F.leaky_relu(F.instance_norm(t, weight=weight, bias=bias, eps=1e-5), 0.01),
        **dict.fromkeys(("medzoo CL", "medzoo CL pytorch ops", "medzoo"),  # apart by layout and kernel switch
                        lambda t: instance_norm_act(t, weight, bias, 1e-5, 0.01)),
        "batch_norm CL": lambda t: F.leaky_relu(F.batch_norm(t, None, None, weight, bias, True, 0.0, 1e-5), 0.01),
        "group_norm CL": lambda t: F.leaky_relu(F.group_norm(t, channels, weight, bias, 1e-5), 0.01),
    }
    norm = norms[variant]

    def run() -> None:  # every variant starts from a fresh copy, as a conv output (medzoo's runs in place)
        norm(x * 1.0).backward(grad)

    return with_fused_kernels(run, not variant.endswith("pytorch ops"))


CONV_TRANSPOSE_VARIANTS = ("nn default", "nn CL")


def conv_transpose_case(shape: tuple[int, ...], cout: int, variant: str, dtype: torch.dtype) -> Callable[[], None]:
    """A 2x2x2 stride-2 transposed conv with a bias (nnU-Net's upsampling), forward + backward, on a
    (B, C, *S) map, as ``variant``: in the default layout or channels-last."""
    gen = torch.Generator().manual_seed(0)
    layout = "channels_last" if variant.endswith("CL") else "default"
    conv = nn.ConvTranspose3d(shape[1], cout, 2, stride=2).to(dtype)
    if layout == "channels_last":
        conv = conv.to(memory_format=CL)
    x = _to_layout(torch.randn(*shape, generator=gen, dtype=dtype), layout).requires_grad_()
    grad = _to_layout(torch.randn(shape[0], cout, *(2 * s for s in shape[2:]), generator=gen, dtype=dtype), layout)

    def run() -> None:
        conv(x).backward(grad)

    return run


GROUP_NORM_VARIANTS = ("group_norm", "group_norm CL", "medzoo GroupNorm CL")


def group_norm_case(shape: tuple[int, ...], variant: str, dtype: torch.dtype) -> Callable[[], None]:
    """Group norm (8 groups, affine, fp32 parameters as under autocast), forward + backward, on a (B, C, *S)
    map, as ``variant``: PyTorch's ``group_norm`` in the default layout or channels-last, or medzoo's
    :class:`~medzoo.accel.norm.GroupNorm` in channels-last (segresnet's and resnet3d_vae's norm)."""
    from medzoo.accel.norm import GroupNorm

    gen = torch.Generator().manual_seed(0)
    norm = GroupNorm(8, shape[1]) if variant.startswith("medzoo") else nn.GroupNorm(8, shape[1])
    layout = "default" if variant == "group_norm" else "channels_last"
    x = _to_layout(torch.randn(*shape, generator=gen, dtype=dtype), layout).requires_grad_()
    grad = torch.randn_like(x)

    def run() -> None:
        norm(x).backward(grad)

    return run


def step_case(quick: bool, layout: str, dtype: torch.dtype | None) -> Callable[[], None]:
    """One training step of nnU-Net's network (benchmarks.training_step's first workload) in ``layout``."""
    from benchmarks.training_step import build_pair, make_step, workloads

    cfg = workloads(quick)[0]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*cfg["shape"], generator=gen)
    y = torch.randint(0, 3, (cfg["shape"][0], *cfg["shape"][2:]), generator=gen)
    net = copy.deepcopy(build_pair(cfg)[0])
    if layout == "channels_last":
        net = net.to(memory_format=CL)
    return make_step(net, _to_layout(x, layout), y, dtype, medzoo_optimizer=True)


def cases(quick: bool, dtype: torch.dtype, with_step: bool) -> list[tuple[str, str, Callable[[], None]]]:
    """(workload, variant, callable) for one precision; the first variant of a workload is its baseline."""
    convs = [(8, 8, 16, 1), (8, 16, 16, 2)] if quick else [(32, 32, 64, 1), (64, 32, 64, 1), (32, 64, 64, 2),
                                                           (64, 64, 32, 1)]
    out: list[tuple[str, str, Callable[[], None]]] = []
    for cin, cout, size, stride in convs:
        name = f"conv {cin}->{cout} {size}^3" + (f" stride {stride}" if stride > 1 else "")
        for layout in ("default", "channels_last"):
            out.append((name, layout, conv_case(cin, cout, size, stride, layout, dtype)))
    part_shape = (2, 8, 12, 14, 10) if quick else (2, 32, 40, 56, 40)
    for layout in ("default", "channels_last"):
        for part in CONV_PARTS:
            fn, flops = conv_part_case(part_shape, part_shape[1], part, layout, dtype)
            fn.flops = flops  # type: ignore[attr-defined]  # read back for the GFLOP/s column
            out.append((f"conv parts {part_shape[1]}->{part_shape[1]} {'x'.join(map(str, part_shape))}",
                        f"{part} {layout}", fn))
    maps = [(1, 8, 16, 16, 16), (2, 8, 12, 14, 10)] if quick else [(1, 32, 64, 64, 64), (2, 32, 40, 56, 40)]
    for shape in maps:
        for variant in NORM_VARIANTS if shape[0] == 1 else NORM_VARIANTS[:5]:  # batch/group norm: batch 1 only
            out.append((f"norm+lrelu {'x'.join(map(str, shape))}", variant, norm_case(shape, variant, dtype)))
    group_maps = [(2, 8, 16, 16, 16)] if quick else [(2, 8, 64, 64, 48), (2, 32, 32, 32, 24)]
    for shape in group_maps:
        for variant in GROUP_NORM_VARIANTS:
            out.append((f"group norm {'x'.join(map(str, shape))}", variant, group_norm_case(shape, variant, dtype)))
    up_shape = (2, 8, 6, 7, 5) if quick else (2, 64, 20, 28, 20)
    for variant in CONV_TRANSPOSE_VARIANTS:
        out.append((f"conv transpose {up_shape[1]}->{up_shape[1] // 2} {'x'.join(map(str, up_shape))}", variant,
                    conv_transpose_case(up_shape, up_shape[1] // 2, variant, dtype)))
    if with_step:
        autocast = None if dtype == torch.float32 else dtype
        for layout in ("default", "channels_last"):
            out.append(("step nnU-Net net" + (" 16^3" if quick else " 64^3"), layout,
                        step_case(quick, layout, autocast)))
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = make_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="also time bf16 (default: where the CPU has native bf16)")
    parser.add_argument("--no-step", action="store_true", help="skip the whole-step rows")
    args = parser.parse_args(argv)
    threads = apply_threads(args.threads)
    reps = reps_for(args, default=5, quick=2)
    from medzoo.runtime import cpu_has_native_bf16

    with_bf16 = cpu_has_native_bf16() if args.bf16 is None else args.bf16
    dtypes = [torch.float32] + ([torch.bfloat16] if with_bf16 else [])
    rows: list[dict[str, Any]] = []
    for dtype in dtypes:
        precision = "fp32" if dtype == torch.float32 else "bf16"
        todo = cases(args.quick, dtype, with_step=not args.no_step)
        # Ops in bf16 are timed on bf16 tensors; the step in bf16 runs under autocast like the trainer.
        times = interleaved({f"{w} | {v}": fn for w, v, fn in todo}, reps=reps, warmup=max(1, args.warmup))
        baseline: dict[str, float] = {}
        for workload, variant, fn in todo:
            seconds = median(times[f"{workload} | {variant}"])
            baseline.setdefault(workload, seconds)
            row = {"workload": workload, "precision": precision, "variant": variant, "median_s": seconds,
                   "speedup": ratio(baseline[workload], seconds)}
            if hasattr(fn, "flops"):
                row["gflops"] = fn.flops / seconds / 1e9
            rows.append(row)
    cols = ["workload", "precision", "variant", "median_s", "speedup", "gflops"]
    print(f"== {NAME}: channels_last_3d vs the default layout, {threads} threads, {reps} reps "
          "(speedup > 1: faster than the default layout)")
    print(format_table(rows, cols))
    results = {"benchmark": NAME, "environment": environment(), "threads": threads, "reps": reps, "rows": rows,
               "markdown": markdown_table(rows, cols)}
    print(f"wrote {write_results(NAME, results, args.out)}")
    return results


if __name__ == "__main__":
    main()
