"""Training step of nnU-Net's network: medzoo ``dynunet`` vs dynamic-network-architectures ``PlainConvUNet``.

Both networks get the same configuration (nnU-Net's defaults: 2 convs per stage, instance norm with affine,
leaky ReLU 0.01, conv bias, transposed-conv upsampling) and the same weights (copied one to one), so any
difference in time is implementation. One step = forward + cross-entropy + backward + SGD (nesterov, momentum
0.99, as nnU-Net), built as each library's trainer builds it: fused on the CPU for medzoo (``medzoo train``,
:func:`medzoo.engine.trainer.fused_optimizer_options`), PyTorch's default for nnU-Net. A 32->32 3x3x3 convolution on 64^3 (in channels-last, its faster layout, see
:func:`benchmarks.common.conv_peak_workload`) is timed in the same interleaved rounds as the reference
"peak"; achieved GFLOP/s (FlopCounterMode, forward + backward) are reported as % of it.

Workloads:
    ``64^3``: 1x1x64^3, 5 stages 32-64-128-256-320 (nnU-Net's 3D default shape of network).
    ``hippocampus``: 2x1x40x56x40, the network nnU-Net plans for Task04_Hippocampus (4 stages 32..256,
    from :func:`medzoo.models.dynunet.dynunet_config_for`); 40 is not a multiple of 16, so 5 stages cannot take it.

Where the CPU has native bf16 (or with ``--bf16``) both networks are also timed with bf16 autocast, against a
bf16 conv peak too.

Two comparisons:
    *same process*: both networks (and the conv peak) interleaved in one process, with glibc's default
    malloc: the kernels and the Python around them, nothing else; ``medzoo_cl*`` is medzoo's network in the
    channels-last layout it trains in on the CPU, ``dna_cl_bf16`` the peer's converted the same way.
    *as shipped* (on unless ``--no-processes``): each side in its own fresh process, interleaved process by
    process, the way each library runs: medzoo with :func:`medzoo.runtime.tune_malloc` (what ``medzoo train``
    calls), in its training layout (:func:`benchmarks.common.in_training_layout`) and with bf16 autocast where
    the CPU has native bf16 (``amp="auto"``; also timed in fp32),
    dynamic-network-architectures in fp32 with glibc's defaults (what nnU-Net runs with: its trainer
    autocasts only on CUDA), and for fairness dynamic-network-architectures with the same malloc setting (in
    fp32 and in bf16: the equal-precision ratios). The conv peak is measured in a tuned process
    too: with glibc's defaults a 64^3 activation (32 MiB) is unmapped when freed and faulted in again page by
    page on the next call, which costs a quarter of a 64^3 step and would understate the peak.

Run: ``python -m benchmarks.training_step [--quick] [--reps N] [--threads N] [--compile] [--[no-]bf16]
[--no-processes]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
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
    own_peak_rss_mb,
    ratio,
    reps_for,
    sgd,
    time_call,
    write_results,
)

NAME = "training_step"


def workloads(quick: bool) -> list[dict[str, Any]]:
    """The configurations to time: name, input shape, features, kernels, strides."""
    from medzoo.models.dynunet import dynunet_config_for

    if quick:
        return [{"name": "tiny 16^3", "shape": (1, 1, 16, 16, 16), "features": (4, 8, 16),
                 "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]]}]
    hippo = dynunet_config_for((40, 56, 40), (1.0, 1.0, 1.0))
    return [
        {"name": "64^3 b1 (5 stages, 32-320)", "shape": (1, 1, 64, 64, 64), "features": (32, 64, 128, 256, 320),
         "kernel_sizes": [[3, 3, 3]] * 5, "strides": [[1, 1, 1]] + [[2, 2, 2]] * 4},
        {"name": "hippocampus 2x40x56x40 (4 stages, 32-256)", "shape": (2, 1, 40, 56, 40),
         "features": hippo.features, "kernel_sizes": [list(k) for k in hippo.kernel_sizes],
         "strides": [list(s) for s in hippo.strides]},
    ]


def build_pair(cfg: dict[str, Any], in_channels: int = 1, num_classes: int = 3) -> tuple[nn.Module, nn.Module | None]:
    """(medzoo dynunet, PlainConvUNet or None if not installed) with identical configuration and weights."""
    from medzoo.models.dynunet import DynUNet

    ours = DynUNet(in_channels, num_classes, len(cfg["shape"]) - 2, features=cfg["features"],
                   kernel_sizes=cfg["kernel_sizes"], strides=cfg["strides"], conv_bias=True)
    try:
        from dynamic_network_architectures.architectures.unet import PlainConvUNet
    except ImportError:
        return ours, None
    conv = {2: nn.Conv2d, 3: nn.Conv3d}[len(cfg["shape"]) - 2]
    norm = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[len(cfg["shape"]) - 2]
    n = len(cfg["features"])
    peer = PlainConvUNet(
        in_channels, n, list(cfg["features"]), conv, cfg["kernel_sizes"], cfg["strides"], 2, num_classes, 2,
        conv_bias=True, norm_op=norm, norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True},
    )
    # The peer builds a head per decoder stage even without deep supervision; medzoo only the one it uses
    # (the last). Leave the peer's unused heads out of the one-to-one copy.
    last_head = f"decoder.seg_layers.{n - 2}."
    used = [p for name, p in peer.named_parameters()
            if not name.startswith("decoder.seg_layers.") or name.startswith(last_head)]
    with torch.no_grad():
        for a, b in zip(used, ours.parameters(), strict=True):
            b.copy_(a)
    return ours, peer


def make_step(net: nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype | None = None,
              medzoo_optimizer: bool = False) -> Callable[[], None]:
    """One training step (forward, cross-entropy, backward, SGD nesterov 0.99) as a zero-argument callable;
    with ``dtype`` the forward autocasts to it and the loss is taken in fp32 (as ``medzoo train`` does), and
    fp16 scales the loss with a ``GradScaler`` (as ``medzoo train`` and nnU-Net do on CUDA).
    ``medzoo_optimizer``: SGD as ``medzoo train`` builds it (fused on the CPU,
    :func:`benchmarks.common.sgd`), else as nnU-Net's trainer does (PyTorch's default: one parameter at a time
    on the CPU)."""
    net.train()
    opt = sgd(net, medzoo_optimizer, lr=1e-3, momentum=0.99, nesterov=True)
    scaler = torch.amp.GradScaler(x.device.type, enabled=dtype == torch.float16)

    def step() -> None:
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = net(x)
        loss = nn.functional.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return step


def _channels_last(net: nn.Module, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    """``net`` and ``x`` in channels-last, whatever the card says (to time either network in that layout)."""
    net, x, _ = in_training_layout(net, x, "dynunet", setting="channels_last")
    return net, x


# Process-level sides of the "as shipped" comparison: name -> (what runs, glibc malloc tuned as medzoo does,
# precision). "medzoo" runs as `medzoo train` does: tuned malloc, bf16 autocast where the CPU has native bf16
# (amp "auto"); nnU-Net's trainer autocasts only on CUDA, so on a CPU it trains in fp32.
SHIPPED_SIDES = {"medzoo": ("medzoo", True, "auto"), "medzoo_fp32": ("medzoo", True, "fp32"),
                 "dna": ("dna", False, "fp32"), "dna_tuned_malloc": ("dna", True, "fp32"),
                 "dna_bf16_tuned_malloc": ("dna", True, "bf16"), "conv_peak": ("conv_peak", True, "fp32")}


def _amp(precision: str) -> torch.dtype | None:
    """Autocast dtype of a precision name on the CPU: "auto" (the trainer's rule, :func:`amp_dtype`), "bf16",
    or "fp32" (None)."""
    from medzoo.engine.config import TrainConfig
    from medzoo.engine.trainer import amp_dtype

    return amp_dtype(TrainConfig(amp="none" if precision == "fp32" else precision), torch.device("cpu"))


def _child(what: str, index: int, steps: int, quick: bool, tune: bool, warmup: int, precision: str = "fp32"
           ) -> dict[str, Any]:
    """Run in a fresh process: ``steps`` timed calls of one side of workload ``index``; returns
    ``{"times": seconds per call, "peak_rss_mb": the process's peak resident memory}``."""
    if tune:
        from medzoo.runtime import tune_malloc

        if not tune_malloc(True):
            raise SystemExit("tune_malloc is not available here (needs glibc)")
    cfg = workloads(quick)[index]
    if what == "conv_peak":
        fn, _ = conv_peak_workload(quick)
    else:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(*cfg["shape"], generator=gen)
        y = torch.randint(0, 3, (cfg["shape"][0], *cfg["shape"][2:]), generator=gen)
        ours, peer = build_pair(cfg)
        if what == "dna" and peer is None:
            raise SystemExit("dynamic-network-architectures is not installed")
        net = ours if what == "medzoo" else peer
        del ours, peer  # only this side's network stays in memory (its peak RSS is reported)
        if what == "medzoo":  # in the layout medzoo trains it in
            net, x, _ = in_training_layout(net, x, "dynunet")
        fn = make_step(net, x, y, _amp(precision), medzoo_optimizer=what == "medzoo")
    for _ in range(max(1, warmup)):
        fn()
    times = [time_call(fn) for _ in range(steps)]
    return {"times": times, "peak_rss_mb": own_peak_rss_mb()}


def shipped(index: int, rounds: int, steps: int, quick: bool, threads: int, warmup: int, with_dna: bool,
            with_bf16: bool = True) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Per-call seconds of each side in :data:`SHIPPED_SIDES`, one fresh process per side and round, the
    order rotating each round; and each side's largest peak resident memory (MiB) over its processes.
    Without ``with_bf16`` the bf16 sides are left out (emulated bf16 is many times slower than fp32), and
    where medzoo's own choice is fp32 its fp32 side is the same run."""
    medzoo_is_fp32 = _amp("auto") is None
    names = [n for n, (what, _, precision) in SHIPPED_SIDES.items()
             if (with_dna or what != "dna") and (with_bf16 or precision != "bf16")
             and not (n == "medzoo_fp32" and medzoo_is_fp32)]  # fmt: skip
    times: dict[str, list[float]] = {n: [] for n in names}
    peak_rss: dict[str, float] = dict.fromkeys(names, 0.0)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            what, tune, precision = SHIPPED_SIDES[name]
            cmd = [sys.executable, "-m", "benchmarks.training_step", "--child", what, "--workload", str(index),
                   "--steps", str(steps), "--threads", str(threads), "--warmup", str(warmup),
                   "--precision", precision]
            cmd += (["--quick"] if quick else []) + (["--tune-malloc"] if tune else [])
            out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                                 cwd=Path(__file__).resolve().parent.parent)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            times[name] += result["times"]
            peak_rss[name] = max(peak_rss[name], result["peak_rss_mb"])
    if medzoo_is_fp32:
        times["medzoo_fp32"], peak_rss["medzoo_fp32"] = times["medzoo"], peak_rss["medzoo"]
    return times, peak_rss


def main(argv: list[str] | None = None) -> dict:
    parser = make_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(dynunet)")
    parser.add_argument("--no-processes", dest="processes", action="store_false",
                        help="skip the as-shipped comparison (one fresh process per side and round)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="process rounds of the as-shipped comparison (default 3, 1 with --quick)")
    parser.add_argument("--child", choices=["medzoo", "dna", "conv_peak"], help=argparse.SUPPRESS)
    parser.add_argument("--workload", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--tune-malloc", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                        help="also time both networks with bf16 autocast (default: where the CPU has native bf16)")
    args = parser.parse_args(argv)
    threads = apply_threads(args.threads)
    if args.child:
        print(json.dumps(_child(args.child, args.workload, args.steps, args.quick, args.tune_malloc, args.warmup,
                                args.precision)))
        return {}
    if args.bf16 is None:
        args.bf16 = _amp("auto") is not None
    reps = reps_for(args, default=5, quick=2)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for cfg in workloads(args.quick):
        torch.manual_seed(0)
        x = torch.randn(*cfg["shape"], generator=gen)
        y = torch.randint(0, 3, (cfg["shape"][0], *cfg["shape"][2:]), generator=gen)
        ours, peer = build_pair(cfg)
        flops = count_flops(make_step(ours, x, y))
        peak_fn, peak_flops = conv_peak_workload(args.quick)
        work = {"medzoo": make_step(ours, x, y, medzoo_optimizer=True), "conv_peak": peak_fn,
                "medzoo_cl": make_step(*_channels_last(copy.deepcopy(ours), x), y,
                                       medzoo_optimizer=True)}
        if peer is not None:
            work["dna"] = make_step(peer, x, y)
        if args.bf16:
            work["medzoo_bf16"] = make_step(copy.deepcopy(ours), x, y, torch.bfloat16, medzoo_optimizer=True)
            work["medzoo_cl_bf16"] = make_step(*_channels_last(copy.deepcopy(ours), x), y, torch.bfloat16,
                                               medzoo_optimizer=True)
            work["conv_peak_bf16"] = conv_peak_workload(args.quick, torch.bfloat16)[0]
            if peer is not None:
                work["dna_bf16"] = make_step(copy.deepcopy(peer), x, y, torch.bfloat16)
                work["dna_cl_bf16"] = make_step(*_channels_last(copy.deepcopy(peer), x), y, torch.bfloat16)
        compile_s: dict[str, float] = {}
        if args.compile:  # compiled in the default layout and in the one medzoo trains in (bf16 too with --bf16)
            variants = {"medzoo_compiled": (copy.deepcopy(ours), x, None),
                        "medzoo_cl_compiled": (*_channels_last(copy.deepcopy(ours), x), None)}
            if args.bf16:
                variants["medzoo_cl_bf16_compiled"] = (*_channels_last(copy.deepcopy(ours), x), torch.bfloat16)
            for key, (net, inp, dtype) in variants.items():
                step_c = make_step(torch.compile(net, dynamic=False), inp, y, dtype, medzoo_optimizer=True)
                start = time.perf_counter()
                step_c()
                compile_s[key] = time.perf_counter() - start
                work[key] = step_c
        times = interleaved(work, reps=reps, warmup=args.warmup)
        med = {k: median(v) for k, v in times.items()}
        peak = peak_flops / med["conv_peak"] / 1e9
        row: dict[str, Any] = {
            "workload": cfg["name"],
            "medzoo_s": med["medzoo"],
            "dna_s": med.get("dna", float("nan")),
            "speedup_vs_dna": ratio(med.get("dna", float("nan")), med["medzoo"]),
            "gflop_per_step": flops / 1e9,
            "medzoo_gflops": flops / med["medzoo"] / 1e9,
            "dna_gflops": flops / med["dna"] / 1e9 if "dna" in med else float("nan"),
            "conv_peak_gflops": peak,
            "medzoo_pct_peak": 100.0 * flops / med["medzoo"] / 1e9 / peak,
            "medzoo_cl_s": med["medzoo_cl"],
            "cl_speedup_vs_dna": ratio(med.get("dna", float("nan")), med["medzoo_cl"]),
            "medzoo_cl_pct_peak": 100.0 * flops / med["medzoo_cl"] / 1e9 / peak,
        }
        if args.bf16:
            bf16_peak = peak_flops / med["conv_peak_bf16"] / 1e9
            row.update({
                "medzoo_bf16_s": med["medzoo_bf16"],
                "dna_bf16_s": med.get("dna_bf16", float("nan")),
                "bf16_speedup_vs_dna_bf16": ratio(med.get("dna_bf16", float("nan")), med["medzoo_bf16"]),
                "medzoo_cl_bf16_s": med["medzoo_cl_bf16"],
                "dna_cl_bf16_s": med.get("dna_cl_bf16", float("nan")),
                "cl_bf16_speedup_vs_dna_bf16": ratio(med.get("dna_bf16", float("nan")), med["medzoo_cl_bf16"]),
                "cl_bf16_speedup_vs_dna_cl_bf16": ratio(med.get("dna_cl_bf16", float("nan")), med["medzoo_cl_bf16"]),
                "medzoo_cl_bf16_pct_bf16_peak": 100.0 * flops / med["medzoo_cl_bf16"] / 1e9 / bf16_peak,
                "bf16_speedup_vs_dna_fp32": ratio(med.get("dna", float("nan")), med["medzoo_bf16"]),
                "bf16_speedup_vs_fp32": ratio(med["medzoo"], med["medzoo_bf16"]),
                "conv_peak_bf16_gflops": bf16_peak,
                "medzoo_bf16_pct_fp32_peak": 100.0 * flops / med["medzoo_bf16"] / 1e9 / peak,
                "medzoo_bf16_pct_bf16_peak": 100.0 * flops / med["medzoo_bf16"] / 1e9 / bf16_peak,
            })
        if args.compile:
            row["compiled_s"] = med["medzoo_compiled"]
            row["compile_time_s"] = sum(compile_s.values())
            row["compiled_speedup_vs_eager"] = ratio(med["medzoo"], med["medzoo_compiled"])
            row["cl_compiled_speedup_vs_cl_eager"] = ratio(med["medzoo_cl"], med["medzoo_cl_compiled"])
            if args.bf16:
                row["cl_bf16_compiled_speedup_vs_cl_bf16_eager"] = ratio(med["medzoo_cl_bf16"],
                                                                         med["medzoo_cl_bf16_compiled"])
        row["times"] = {k: v for k, v in times.items()}
        if args.processes:
            index = workloads(args.quick).index(cfg)
            rounds = args.rounds or (1 if args.quick else 3)
            proc, proc_rss = shipped(index, rounds, 2 if args.quick else 3, args.quick, threads, args.warmup,
                                     with_dna=peer is not None, with_bf16=args.bf16)
            pmed = {k: median(v) for k, v in proc.items()}
            shipped_peak = peak_flops / pmed["conv_peak"] / 1e9
            row.update({
                "shipped_medzoo_precision": "bf16" if _amp("auto") is not None else "fp32",
                "shipped_medzoo_s": pmed["medzoo"],
                "shipped_medzoo_fp32_s": pmed["medzoo_fp32"],
                "shipped_fp32_speedup_vs_dna": ratio(pmed.get("dna", float("nan")), pmed["medzoo_fp32"]),
                "shipped_dna_s": pmed.get("dna", float("nan")),
                "shipped_speedup_vs_dna": ratio(pmed.get("dna", float("nan")), pmed["medzoo"]),
                "shipped_speedup_vs_dna_tuned_malloc": ratio(pmed.get("dna_tuned_malloc", float("nan")),
                                                             pmed["medzoo"]),
                # equal precision, both with medzoo's malloc setting: what is left is layout, norm and kernels
                "shipped_fp32_speedup_vs_dna_tuned_malloc": ratio(pmed.get("dna_tuned_malloc", float("nan")),
                                                                  pmed["medzoo_fp32"]),
                "shipped_speedup_vs_dna_bf16_tuned_malloc": ratio(pmed.get("dna_bf16_tuned_malloc", float("nan")),
                                                                  pmed["medzoo"]),
                "shipped_conv_peak_gflops": shipped_peak,
                "shipped_medzoo_pct_peak": 100.0 * flops / pmed["medzoo"] / 1e9 / shipped_peak,
                "shipped_medzoo_peak_rss_mb": proc_rss["medzoo"],
                "shipped_medzoo_fp32_peak_rss_mb": proc_rss["medzoo_fp32"],
                "shipped_dna_peak_rss_mb": proc_rss.get("dna", float("nan")),
                "shipped_times": proc,
                "shipped_peak_rss_mb": proc_rss,
            })
        rows.append(row)
    results = {"benchmark": NAME, "environment": environment(), "threads": threads, "reps": reps, "rows": rows,
               "note": "ratios are peer/medzoo (>1: medzoo faster); columns without a prefix: peers timed interleaved in "
                       "the same process (glibc malloc defaults), fp32, and *_bf16 the same with bf16 autocast; "
                       "shipped_*: one fresh process per side and round, medzoo as `medzoo train` runs it "
                       "(medzoo.runtime.tune_malloc(), bf16 autocast where the CPU has native bf16: "
                       "shipped_medzoo_precision; shipped_medzoo_fp32 in fp32), dna as nnU-Net runs it on a CPU "
                       "(fp32, glibc's defaults; dna_tuned_malloc with medzoo's malloc setting); *_pct_peak "
                       "against the fp32 conv peak"}
    cols = ["workload", "medzoo_s", "dna_s", "speedup_vs_dna", "medzoo_gflops", "dna_gflops", "conv_peak_gflops",
            "medzoo_pct_peak", "medzoo_cl_s", "cl_speedup_vs_dna", "medzoo_cl_pct_peak"] + (["compiled_s", "compile_time_s", "compiled_speedup_vs_eager",
                                                       "cl_compiled_speedup_vs_cl_eager"] if args.compile else [])
    if args.bf16:
        cols += ["medzoo_bf16_s", "dna_bf16_s", "bf16_speedup_vs_dna_bf16", "medzoo_cl_bf16_s", "dna_cl_bf16_s",
                 "cl_bf16_speedup_vs_dna_bf16", "cl_bf16_speedup_vs_dna_cl_bf16", "medzoo_cl_bf16_pct_bf16_peak",
                 "bf16_speedup_vs_dna_fp32",
                 "bf16_speedup_vs_fp32", "conv_peak_bf16_gflops", "medzoo_bf16_pct_fp32_peak",
                 "medzoo_bf16_pct_bf16_peak"] + (["cl_bf16_compiled_speedup_vs_cl_bf16_eager"] if args.compile else [])
    if args.processes:
        cols += ["shipped_medzoo_precision", "shipped_medzoo_s", "shipped_medzoo_fp32_s", "shipped_dna_s",
                 "shipped_speedup_vs_dna", "shipped_fp32_speedup_vs_dna", "shipped_speedup_vs_dna_tuned_malloc",
                 "shipped_fp32_speedup_vs_dna_tuned_malloc", "shipped_speedup_vs_dna_bf16_tuned_malloc",
                 "shipped_conv_peak_gflops", "shipped_medzoo_pct_peak", "shipped_medzoo_peak_rss_mb",
                 "shipped_medzoo_fp32_peak_rss_mb", "shipped_dna_peak_rss_mb"]
    print(f"== {NAME}: one training step (fwd + bwd + SGD), medians of {reps}, {threads} threads")
    print(format_table(rows, cols))
    results["markdown"] = markdown_table(rows, cols)
    path = write_results(NAME, results, args.out)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
