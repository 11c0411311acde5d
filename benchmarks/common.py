"""Shared timing helpers and the calling convention of every benchmark module.

Calling convention (every ``benchmarks/<name>.py`` follows it):

* The module exposes ``main(argv: list[str] | None = None) -> dict``. ``main`` parses ``argv`` (``None`` means
  ``sys.argv[1:]``) with a parser built by :func:`make_parser`, so every benchmark understands at least
  ``--quick`` (tiny sizes, few repetitions: must finish in a few seconds, used by the smoke test),
  ``--reps N`` (timed repetitions per workload), ``--threads N`` (torch intra-op threads; default: leave the
  process setting alone) and ``--out DIR`` (results folder, default ``benchmarks/results``).
* ``main`` measures medzoo and its peer(s) in the same process, interleaved (round-robin: medzoo, peer,
  medzoo, peer, ...; see :func:`interleaved`), several repetitions, and reports medians and ratios.
* ``main`` prints its table (:func:`format_table`, plain text; :func:`markdown_table` for docs/benchmarks.md),
  writes ``<out>/<name>.json`` with :func:`write_results`, and returns the same results dict.
* The results dict is JSON-able and has at least ``{"benchmark": name, "environment": environment(),
  "rows": [ {...}, ... ]}``; each row is one workload with its medians (seconds) and ratios
  (``peer / medzoo``: > 1 means medzoo is faster).
* Missing optional peers or data are not errors: add ``{"skipped": "why"}`` rows (or return
  ``{"benchmark": name, "skipped": "why"}``) and print the reason.
* The module is runnable as ``python -m benchmarks.<name>`` via ``if __name__ == "__main__": main()``.

``python -m benchmarks [--quick] [--only NAME] [--full]`` runs them all (see ``benchmarks/__main__.py``).

Example:
    >>> times = interleaved({"a": lambda: sum(range(1000)), "b": lambda: sum(range(2000))}, reps=5)
    >>> summary = {name: median(t) for name, t in times.items()}
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------------------------- arguments
def make_parser(name: str, description: str = "") -> argparse.ArgumentParser:
    """The argument parser every benchmark starts from (add your own options to it).

    Options: ``--quick``, ``--reps N`` (default: 5, 2 with ``--quick``; ``None`` means "module default"),
    ``--warmup N`` (default 1), ``--threads N`` and ``--out DIR``.
    """
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=description)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repetitions (smoke test)")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per workload")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up calls per workload")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: as set)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for <name>.json")
    return parser


def reps_for(args: argparse.Namespace, default: int = 5, quick: int = 2) -> int:
    """Number of timed repetitions: ``--reps`` if given, else ``quick`` with ``--quick``, else ``default``."""
    if args.reps is not None:
        return max(1, args.reps)
    return quick if args.quick else default


def apply_threads(threads: int | None) -> int:
    """Set torch intra-op threads if ``threads`` is given; return the thread count in effect."""
    import torch

    if threads is not None and threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


# ------------------------------------------------------------------------------------------------ timing
def time_call(fn: Callable[[], Any]) -> float:
    """Wall-clock seconds of one call to ``fn``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(
    workloads: dict[str, Callable[[], Any]], reps: int = 5, warmup: int = 1, min_time: float = 0.0
) -> dict[str, list[float]]:
    """Time several workloads round-robin so that machine noise hits all of them alike.

    Args:
        workloads: name -> zero-argument callable (one call = one measured unit, e.g. one training step).
        reps: timed rounds; each round calls every workload once, in order (the order rotates each round).
        warmup: untimed calls per workload before timing starts.
        min_time: keep adding rounds (up to 4x ``reps``) until each workload has this many seconds in total.

    Returns:
        name -> list of per-call seconds (length >= ``reps``).
    """
    names = list(workloads)
    for _ in range(warmup):
        for name in names:
            workloads[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    rounds = 0
    while True:
        order = names[rounds % len(names):] + names[: rounds % len(names)]
        for name in order:
            gc.collect()
            times[name].append(time_call(workloads[name]))
        rounds += 1
        if rounds >= reps and (min(sum(t) for t in times.values()) >= min_time or rounds >= 4 * reps):
            break
    return times


def median(values: Sequence[float]) -> float:
    """Median of ``values`` (NaN if empty)."""
    return float(statistics.median(values)) if values else float("nan")


def summarize(values: Sequence[float]) -> dict[str, float]:
    """``{"median", "min", "max", "n"}`` of a list of seconds."""
    if not values:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "n": 0}
    return {"median": median(values), "min": float(min(values)), "max": float(max(values)), "n": len(values)}


def ratio(peer_seconds: float, ours_seconds: float) -> float:
    """Speed-up of medzoo over a peer: ``peer / ours`` (> 1 means medzoo is faster)."""
    if ours_seconds <= 0 or ours_seconds != ours_seconds:
        return float("nan")
    return float(peer_seconds / ours_seconds)


# ------------------------------------------------------------------------------------------ optimizer
def sgd(net: Any, medzoo_optimizer: bool, **hyper: Any) -> Any:
    """``torch.optim.SGD`` over ``net``'s parameters with ``hyper``, built as ``medzoo train`` builds it (fused
    on the CPU, :func:`medzoo.engine.trainer.fused_optimizer_options`) or, without ``medzoo_optimizer``, with
    PyTorch's default (one parameter at a time on the CPU, as nnU-Net's trainer and plain PyTorch practice)."""
    import torch

    from medzoo.engine.trainer import fused_optimizer_options

    params = list(net.parameters())
    fused = fused_optimizer_options(params, "sgd") if medzoo_optimizer else {}
    return torch.optim.SGD(params, **hyper, **fused)


# -------------------------------------------------------------------------------------- fused kernels
def with_fused_kernels(fn: Callable[[], Any], enabled: bool) -> Callable[[], None]:
    """``fn`` run with medzoo's fused CPU kernels switched on or off (``MEDZOO_FUSED_KERNELS``, restored
    afterwards), so both sides of a comparison can be interleaved in one process."""
    value = "1" if enabled else "0"

    def run() -> None:
        before = os.environ.get("MEDZOO_FUSED_KERNELS")
        os.environ["MEDZOO_FUSED_KERNELS"] = value
        try:
            fn()
        finally:
            if before is None:
                del os.environ["MEDZOO_FUSED_KERNELS"]
            else:
                os.environ["MEDZOO_FUSED_KERNELS"] = before

    return run


# ---------------------------------------------------------------------------------------- memory layout
def in_training_layout(net: Any, x: Any, model_name: str, setting: str = "auto") -> tuple[Any, Any, str]:
    """``net`` and its input ``x`` in the memory layout :func:`medzoo.runtime.preferred_memory_format` picks for
    ``model_name`` on ``x``'s device (``setting`` "auto" as ``medzoo train``; "channels_last" forces it), and
    the layout's name ("contiguous", "channels_last", "channels_last_3d")."""
    from medzoo.models.registry import prefers_channels_last
    from medzoo.runtime import preferred_memory_format

    fmt = preferred_memory_format(setting, x.dim() - 2, x.device, prefers_channels_last(model_name))
    if fmt is None:
        return net, x, "contiguous"
    return net.to(memory_format=fmt), x.contiguous(memory_format=fmt), str(fmt).removeprefix("torch.")


# -------------------------------------------------------------------------------------------- conv peak
def conv_peak_workload(quick: bool, dtype: Any = None, channels_last: bool = True) -> tuple[Callable[[], Any], float]:
    """The reference conv (32->32, 3x3x3 on 64^3; 8 channels on 16^3 with --quick) in ``dtype`` (a
    ``torch.dtype``; None: fp32), forward only, and its FLOPs.

    A peak is the best the machine does, so the conv runs in channels-last, its faster layout on the CPU (in
    the default layout oneDNN copies a bf16 map to channels-last and back around the conv); the two layouts'
    rates are compared in docs/benchmarks.md.
    """
    import torch

    dtype = dtype or torch.float32
    ch, size = (8, 16) if quick else (32, 64)
    conv = torch.nn.Conv3d(ch, ch, 3, padding=1, bias=False).to(dtype)
    x = torch.randn(1, ch, size, size, size, dtype=dtype)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)

    def run() -> None:
        with torch.no_grad():
            conv(x)

    return run, 2.0 * ch * ch * 27 * size**3


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs of one call of ``fn`` counted by ``torch.utils.flop_counter.FlopCounterMode`` (fwd + bwd if run)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


# ------------------------------------------------------------------------------------------------ memory
def own_peak_rss_mb() -> float:
    """Peak resident memory (VmHWM, MiB) of this process so far; NaN where /proc is missing."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return float("nan")
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def peak_rss_mb_subprocess(code: str, timeout: float = 600.0) -> float:
    """Peak resident memory (VmHWM, MiB) of a fresh Python process running ``code``.

    Each workload runs in its own process, so the high-water mark is that workload's alone (tracemalloc does
    not see torch's allocations). ``code`` is run with ``python -c``; the repo root is on ``sys.path``.

    Returns:
        Peak RSS in MiB, or NaN if the process failed (its stderr is logged to this process's stderr).
    """
    probe = (
        "\nimport re as _re\n"
        "_s = open('/proc/self/status').read()\n"
        "print('VMHWM_KB', _re.search(r'VmHWM:\\s+(\\d+)', _s).group(1))\n"
    )
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", code + probe], capture_output=True, text=True, timeout=timeout, env=env, cwd=root
    )
    for line in proc.stdout.splitlines():
        if line.startswith("VMHWM_KB"):
            return int(line.split()[1]) / 1024.0
    sys.stderr.write(f"memory probe failed (rc={proc.returncode}):\n{proc.stderr[-2000:]}\n")
    return float("nan")


# --------------------------------------------------------------------------------------------- reporting
def environment() -> dict[str, Any]:
    """Versions, threads and load average: stored with every result so numbers can be read in context."""
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        env["loadavg"] = list(os.getloadavg())
    except OSError:
        pass
    for pkg in ("monai", "torchio", "dynamic_network_architectures"):
        try:
            from importlib.metadata import version

            env[pkg] = version(pkg.replace("_", "-"))
        except Exception:  # noqa: BLE001 - optional peers
            env[pkg] = None
    return env


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.4f}"
    return str(value)


def format_table(rows: Iterable[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain-text aligned table of ``rows`` (missing cells print as ``-``)."""
    rows = list(rows)
    if not rows:
        return "(no rows)"
    if columns is None:
        columns = []
        for row in rows:
            columns += [k for k in row if k not in columns]
    cells = [[_fmt(row.get(c, "-")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def markdown_table(rows: Iterable[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """The same table in GitHub markdown (for docs/benchmarks.md)."""
    rows = list(rows)
    if not rows:
        return ""
    if columns is None:
        columns = []
        for row in rows:
            columns += [k for k in row if k not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_fmt(row.get(c, "-")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, results: dict[str, Any], out_dir: str | Path | None = None) -> Path:
    """Write ``results`` as ``<out_dir>/<name>.json`` atomically (NaN written as null); return the path."""
    from medzoo.utils import atomic_write_text

    out = Path(out_dir) if out_dir is not None else RESULTS_DIR

    def clean(obj: Any) -> Any:
        if isinstance(obj, float) and obj != obj:
            return None
        if isinstance(obj, dict):
            return {str(k): clean(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [clean(v) for v in obj]
        if isinstance(obj, Path):
            return str(obj)
        return obj

    return atomic_write_text(out / f"{name}.json", json.dumps(clean(results), indent=2) + "\n")
