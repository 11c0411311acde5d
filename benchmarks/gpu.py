"""The benchmarks on a GPU, in fp32 and with AMP: nnU-Net's training step, the zoo, sliding window, predict.

The other modules measure on the CPU. This one repeats what matters on a GPU, where the questions differ:
fp32 against autocast (fp16 with a ``GradScaler``, as nnU-Net trains on CUDA, and bf16, what ``medzoo train
--amp auto`` picks on a GPU that supports it), achieved TFLOP/s against the GPU's own convolution peak in the
same precision, and peak GPU memory.

"fp32" is PyTorch's default on CUDA, where cuDNN convolutions may use TF32 (``torch.backends.cudnn.allow_tf32``).

Timing: each timed call is bracketed by ``torch.cuda.synchronize``; every side runs with
``torch.backends.cudnn.benchmark = True`` (as ``medzoo train`` and nnU-Net set it) and the warm-up calls let
cuDNN pick its algorithms first. Peers are timed interleaved in the same process, as everywhere in
``benchmarks/``. Memory: ``torch.cuda.max_memory_allocated`` during one call, minus what was allocated
before it (weights, inputs and optimizer state are the same for both sides), in its own untimed call.

Sections (``--only`` picks some):
    ``training_step``: :func:`benchmarks.training_step.build_pair` (medzoo ``dynunet`` and
        dynamic-network-architectures' ``PlainConvUNet``, same configuration and weights) at 1x1x64^3
        (5 stages), hippocampus 2x1x40x56x40 (4 stages) and 2x1x128^3 (6 stages 32..320: nnU-Net's
        3d_fullres network for 1 mm isotropic data), in each precision.
    ``models``: forward and training step of :data:`benchmarks.models.MAIN_MODELS` on a batch of 2 at 128^3
        (rounded to each card's size rule), in each precision.
    ``sliding_window``: :func:`benchmarks.sliding_window.core` on the GPU: the 160x192x160 head phantom,
        medzoo's sliding window against MONAI's with the same windows; fp32 (labels must be identical) and
        autocast (their agreement is reported).
    ``predict``: :func:`benchmarks.sliding_window.end_to_end` on the GPU: file in, file out, each side in
        fresh processes, ``medzoo.inference.predict(device="cuda")`` against the MONAI pipeline.

Without a GPU the module returns one skipped row (``python -m benchmarks`` runs it, so a GPU machine gets its
table with the rest). ``--device cpu`` runs the same code on the CPU (a wiring check; the tests use it with
``--quick``).

Run: ``python -m benchmarks.gpu [--quick] [--reps N] [--only training_step,models,sliding_window,predict]
[--device cuda:1]``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.common import (
    count_flops,
    environment,
    format_table,
    interleaved,
    make_parser,
    markdown_table,
    median,
    ratio,
    reps_for,
    write_results,
)

NAME = "gpu"
SECTIONS = ("training_step", "models", "sliding_window", "predict")
DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ helpers
def precisions(device: torch.device) -> list[str]:
    """fp32, fp16 and bf16 on a GPU (bf16 where it is supported); fp32 and bf16 on the CPU."""
    if device.type == "cuda":
        return ["fp32", "fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])
    return ["fp32", "bf16"]


def synced(device: torch.device) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    """A wrapper that makes one call of ``fn`` include all the GPU work it queued (identity on the CPU)."""
    if device.type != "cuda":
        return lambda fn: fn

    def wrap(fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> None:
            torch.cuda.synchronize(device)
            fn()
            torch.cuda.synchronize(device)

        return run

    return wrap


def peak_memory_mb(fn: Callable[[], Any], device: torch.device) -> float:
    """GPU memory (MiB) one call of ``fn`` allocates at its peak above what was allocated before it; NaN on
    the CPU (the process's resident memory is not one call's)."""
    if device.type != "cuda":
        return float("nan")
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def conv_peak(device: torch.device, dtype: torch.dtype | None, quick: bool) -> tuple[Callable[[], Any], float]:
    """The reference convolution (3x3x3, forward) in ``dtype`` and its FLOPs: 64->64 channels on 2x128^3 on a
    GPU (a 64^3 conv is too small to fill one), 32->32 on 1x64^3 on the CPU as in the other modules, 8->8 on
    16^3 with ``quick``."""
    batch, ch, size = (1, 8, 16) if quick else ((2, 64, 128) if device.type == "cuda" else (1, 32, 64))
    conv = torch.nn.Conv3d(ch, ch, 3, padding=1, bias=False).to(device)
    x = torch.randn(batch, ch, size, size, size, device=device)

    def run() -> None:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            conv(x)

    return run, 2.0 * batch * ch * ch * 27 * size**3


def _tflops(flops: float, seconds: float) -> float:
    return flops / seconds / 1e12 if seconds > 0 else float("nan")


# ------------------------------------------------------------------------------------------ training step
def training_workloads(quick: bool, device: torch.device) -> list[dict[str, Any]]:
    """:func:`benchmarks.training_step.workloads`, plus nnU-Net's 6-stage network at 2x1x128^3 on a GPU."""
    from benchmarks.training_step import workloads
    from medzoo.models.dynunet import dynunet_config_for

    cfgs = workloads(quick)
    if not quick and device.type == "cuda":
        big = dynunet_config_for((128, 128, 128), (1.0, 1.0, 1.0))
        cfgs.append({"name": f"128^3 b2 ({len(big.features)} stages, 32-320)", "shape": (2, 1, 128, 128, 128),
                     "features": big.features, "kernel_sizes": [list(k) for k in big.kernel_sizes],
                     "strides": [list(s) for s in big.strides]})
    return cfgs


def training_rows(device: torch.device, quick: bool, reps: int, warmup: int) -> list[dict[str, Any]]:
    """One row per workload and precision: medzoo vs dynamic-network-architectures, a training step each."""
    from benchmarks.training_step import build_pair, make_step

    sync = synced(device)
    rows = []
    for cfg in training_workloads(quick, device):
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(*cfg["shape"], generator=gen).to(device)
        y = torch.randint(0, 3, (cfg["shape"][0], *cfg["shape"][2:]), generator=gen).to(device)
        ours, peer = build_pair(cfg)
        flops = count_flops(make_step(copy.deepcopy(ours).to(device), x, y))
        for precision in precisions(device):
            dtype = DTYPES[precision]
            sides = {"medzoo": copy.deepcopy(ours).to(device)}
            if peer is not None:
                sides["dna"] = copy.deepcopy(peer).to(device)
            steps = {name: make_step(net, x, y, dtype, medzoo_optimizer=name == "medzoo") for name, net in sides.items()}
            peak_fn, peak_flops = conv_peak(device, dtype, quick)
            times = interleaved({name: sync(fn) for name, fn in {**steps, "conv_peak": peak_fn}.items()},
                                reps=reps, warmup=max(2, warmup))
            med = {k: median(v) for k, v in times.items()}
            peak = _tflops(peak_flops, med["conv_peak"])
            rows.append({
                "section": "training_step", "workload": cfg["name"], "precision": precision,
                "medzoo_ms": 1e3 * med["medzoo"], "dna_ms": 1e3 * med.get("dna", float("nan")),
                "speedup_vs_dna": ratio(med.get("dna", float("nan")), med["medzoo"]),
                "medzoo_tflops": _tflops(flops, med["medzoo"]), "conv_peak_tflops": peak,
                "medzoo_pct_peak": 100.0 * _tflops(flops, med["medzoo"]) / peak,
                "medzoo_mem_mb": peak_memory_mb(steps["medzoo"], device),
                "dna_mem_mb": peak_memory_mb(steps["dna"], device) if "dna" in steps else float("nan"),
                **({} if peer is not None else {"skipped": "dynamic-network-architectures is not installed"}),
            })  # fmt: skip
            del sides, steps
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


# ------------------------------------------------------------------------------------------------- models
def model_rows(device: torch.device, quick: bool, reps: int, warmup: int) -> list[dict[str, Any]]:
    """One row per model and precision: forward and training step, TFLOP/s, % of the conv peak, memory."""
    from benchmarks.models import MAIN_MODELS, make_forward, make_train
    from medzoo.models import create_model, get_card, list_models

    sync = synced(device)
    names = ["unet3d", "dynunet"] if quick else [n for n in MAIN_MODELS if n in set(list_models())]
    size, batch = (16, 1) if quick else ((128, 2) if device.type == "cuda" else (64, 1))
    rows = []
    for name in names:
        card = get_card(name)
        patch = tuple(card.valid_size(size) for _ in range(3))
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 1, *patch, generator=gen).to(device)
        y = torch.randint(0, 3, (batch, *patch), generator=gen).to(device)
        kwargs = dict(card.tiny_kwargs) if quick else {}
        for precision in precisions(device):
            dtype = DTYPES[precision]
            try:
                model = create_model(name, in_channels=1, num_classes=3, spatial_dims=3, **kwargs).to(device)
                fwd, step = make_forward(model, x, dtype), make_train(model, x, y, dtype)
                f_flops, t_flops = count_flops(fwd), count_flops(step)
                peak_fn, peak_flops = conv_peak(device, dtype, quick)
                times = interleaved({"forward": sync(fwd), "train": sync(step), "peak": sync(peak_fn)},
                                    reps=reps, warmup=max(2, warmup))
                memory = peak_memory_mb(step, device)
            except Exception as err:  # noqa: BLE001 - one model that fails (e.g. out of memory) must not stop the table
                logger.warning("model %s (%s) failed: %s", name, precision, err)
                rows.append({"section": "models", "workload": name, "precision": precision,
                             "skipped": f"{type(err).__name__}: {err}"[:200]})
                continue
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            med = {k: median(v) for k, v in times.items()}
            peak = _tflops(peak_flops, med["peak"])
            rows.append({
                "section": "models", "workload": f"{name} {batch}x" + "x".join(map(str, patch)), "precision": precision,
                "forward_ms": 1e3 * med["forward"], "train_ms": 1e3 * med["train"],
                "forward_tflops": _tflops(f_flops, med["forward"]), "train_tflops": _tflops(t_flops, med["train"]),
                "conv_peak_tflops": peak, "train_pct_peak": 100.0 * _tflops(t_flops, med["train"]) / peak,
                "train_mem_mb": memory,
            })  # fmt: skip
    return rows


# ------------------------------------------------------------------------------------------ sliding window
def _sliding_window_setup(quick: bool, device: torch.device):
    """The trained benchmark network of :mod:`benchmarks.sliding_window` and its settings, shared by the
    ``sliding_window`` and ``predict`` sections: ``(net, features, shape, patch)``."""
    from benchmarks.common import RESULTS_DIR
    from benchmarks.sliding_window import trained_net

    if quick:
        shape, patch, features, steps, train_patch = (40, 48, 40), (24, 24, 24), (4, 8), 3, 16
    else:
        shape, patch, features, steps, train_patch = (160, 192, 160), (96, 96, 96), (8, 16, 32, 64), 200, 48
    net, _ = trained_net(shape, features, steps, train_patch, None if quick else RESULTS_DIR, device=str(device))
    return net, features, shape, patch


def sliding_window_rows(setup: tuple, device: torch.device, reps: int, warmup: int) -> list[dict[str, Any]]:
    """:func:`benchmarks.sliding_window.core` on ``device``, once per precision (``setup``: see
    :func:`_sliding_window_setup`)."""
    from benchmarks.sliding_window import core

    net, _, shape, patch = setup
    rows = []
    for precision in precisions(device):
        row = core(net, shape, patch, 4, reps, max(2, warmup), device=str(device), dtype=DTYPES[precision],
                   sync=synced(device))
        rows.append({"section": "sliding_window", "precision": precision, **row})
    return rows


def predict_rows(setup: tuple, device: torch.device, reps: int, threads: int) -> list[dict[str, Any]]:
    """:func:`benchmarks.sliding_window.end_to_end` on ``device``: ``medzoo predict`` with its default precision
    (autocast on a GPU) and in fp32, against MONAI in fp32 and under the same autocast (one row)."""
    from benchmarks.sliding_window import end_to_end

    net, features, shape, patch = setup
    row = end_to_end(net, features, shape, patch, 4, reps, threads, device=str(device))
    return [{"section": "predict", "precision": "default", **row}]


# --------------------------------------------------------------------------------------------------- main
def _monai_missing() -> str | None:
    try:
        import monai  # noqa: F401
    except ImportError:
        return "monai is not installed"
    return None


def main(argv: list[str] | None = None) -> dict:
    parser = make_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:1, ... (cpu: the same code on the CPU)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"== {NAME}: skipped, CUDA is not available")
        results = {"benchmark": NAME, "environment": environment(), "skipped": "CUDA is not available", "rows": []}
        write_results(NAME, results, args.out)
        return results
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True
    reps = reps_for(args, default=8 if device.type == "cuda" else 3, quick=1)
    rows: list[dict[str, Any]] = []
    if "training_step" in wanted:
        rows += training_rows(device, args.quick, reps, args.warmup)
    if "models" in wanted:
        rows += model_rows(device, args.quick, reps, args.warmup)
    monai_sections = [s for s in ("sliding_window", "predict") if s in wanted]
    missing = _monai_missing() if monai_sections else None
    if missing:
        rows += [{"section": section, "skipped": missing} for section in monai_sections]
    elif monai_sections:
        setup = _sliding_window_setup(args.quick, device)  # one network for both sections
        if "sliding_window" in monai_sections:
            rows += sliding_window_rows(setup, device, reps, args.warmup)
        if "predict" in monai_sections:
            rows += predict_rows(setup, device, max(1, reps // 4), torch.get_num_threads())
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    results = {"benchmark": NAME, "environment": {**environment(), "device": gpu}, "reps": reps, "rows": rows,
               "note": "ratios are peer/medzoo (>1: medzoo faster); *_pct_peak against a 3x3x3 conv in the same "
                       "precision, timed in the same rounds; *_mem_mb: peak allocated above what was held before "
                       "the call"}
    tables = []
    for section in SECTIONS:
        part = [{k: v for k, v in r.items() if k != "section" and not isinstance(v, (dict, list))}
                for r in rows if r.get("section") == section]
        if part:
            print(f"== {NAME} / {section} on {gpu}, medians of {reps}")
            print(format_table(part))
            tables.append(f"**{section}** ({gpu})\n\n" + markdown_table(part))
    results["markdown"] = "\n\n".join(tables)
    print(f"wrote {write_results(NAME, results, args.out)}")
    return results


if __name__ == "__main__":
    main()
