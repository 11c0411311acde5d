"""Prediction backends on the CPU: PyTorch as ``backend="auto"`` runs it against OpenVINO, whole predictions.

For each network (default: unet3d, dynunet, segresnet, registry defaults, seeded random weights, 1 channel,
3 classes, patch 40x56x40, z-score) a run folder predicts real hippocampus scans (the first ``--cases`` of
``Task04_Hippocampus/imagesTr``; a synthetic 36x50x35 scan when the data is absent) through
:class:`medzoo.inference.Predictor`, once with each runtime as :func:`medzoo.inference.backends.load_backend`
builds it:

- ``torch``: PyTorch in the layout and precision ``auto`` gives it (channels-last where the model's card
  says so; bf16 autocast only on a CPU with native bf16);
- ``openvino``: the run's cached ONNX export compiled by OpenVINO (fp32).

Each CPU class runs in its own process: the machine as it is, and with oneDNN capped at AVX2
(``ONEDNN_MAX_CPU_ISA=AVX2``, the laptop class). Inside a process the two runtimes alternate
(A/B, B/A, ...) after one untimed warm-up each; a timed unit is the prediction of all the cases. The row
reports the median seconds, ``speedup`` = torch / openvino per round (> 1: OpenVINO faster; median, min and
max over the rounds, the spread being the noise), the share of equal labels and the largest probability
difference. A runtime that cannot load (not installed, export or check failed) is reported in the row, not
asserted away.

Run: ``python -m benchmarks.backends [--quick] [--reps N] [--models a,b] [--cases N] [--isa default,AVX2]``
(``--quick``: one tiny network on a tiny scan, this process only). The hippocampus folder is found as
:func:`benchmarks.time_to_dice.hippocampus_dir` finds it (``MEDZOO_HIPPOCAMPUS_DIR``).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import (
    apply_threads,
    environment,
    format_table,
    make_parser,
    markdown_table,
    write_results,
)

NAME = "backends"
MODELS = "unet3d,dynunet,segresnet"
RUNTIMES = ("torch", "openvino")
PATCH = (40, 56, 40)


def _run_folder(root: Path, model: str, patch: tuple[int, ...], model_kwargs: dict[str, Any]) -> Path:
    """A run folder (plan + checkpoint) of ``model`` with seeded random weights."""
    import medzoo
    from medzoo.engine.checkpoint import save_checkpoint
    from medzoo.planning.plan import Plan

    run = root / model
    run.mkdir(parents=True)
    plan = Plan(model=model, in_channels=1, num_classes=3, patch_size=patch, normalization=["zscore"],
                model_kwargs=model_kwargs)  # fmt: skip
    torch.manual_seed(0)
    net = medzoo.create_model(model, in_channels=1, num_classes=3, spatial_dims=3, **model_kwargs)
    plan.save(run / "plan.json")
    save_checkpoint(run / "checkpoint_best.pt", {"model": net.state_dict(), "plan": plan.to_dict()})
    return run


def _scans(count: int, quick: bool) -> list:
    """The first ``count`` hippocampus training scans, or a synthetic one."""
    from benchmarks.time_to_dice import hippocampus_dir
    from medzoo.io.readers import read_volume
    from medzoo.io.volume import Volume, make_affine

    data = None if quick else hippocampus_dir()
    if data is not None:
        files = sorted((data / "imagesTr").glob("hippocampus_*.nii.gz"))[:count]
        return [read_volume(f) for f in files]
    rng = np.random.default_rng(0)
    shape = (20, 18, 17) if quick else (36, 50, 35)
    rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    array = rng.normal(size=(1, *shape)).astype(np.float32)
    return [Volume(array, make_affine((0.9, 1.1, 1.6), (10.0, -20.0, 5.0), rotation=rot))]


def _child(run_root: Path, models: list[str], reps: int, cases: int, quick: bool) -> list[dict[str, Any]]:
    """This process's rows: every model, the two runtimes interleaved."""
    from medzoo.inference.backends import load_backend
    from medzoo.inference.predictor import Predictor

    scans = _scans(cases, quick)
    rows = []
    for model in models:
        run = run_root / model
        row: dict[str, Any] = {"model": model, "cases": len(scans)}
        predictors = {}
        for name in RUNTIMES:
            try:
                net, plan = load_backend(run, backend=name, device="cpu", amp="auto")
            except Exception as err:  # noqa: BLE001 - a runtime that is missing or refuses the model: reported
                row[f"{name}_skipped"] = f"{type(err).__name__}: {err}"[:200]
                continue
            predictors[name] = Predictor(net, plan, device="cpu")  # amp and memory format "auto"
            if name == "torch":
                row["torch_layout"] = "channels_last" if predictors[name].memory_format else "contiguous"
                row["torch_precision"] = "bf16" if predictors[name].amp_dtype == torch.bfloat16 else "fp32"
        outputs = {k: [p.predict_case(s, probabilities=True) for s in scans] for k, p in predictors.items()}
        times: dict[str, list[float]] = {k: [] for k in predictors}
        order = list(predictors)
        for r in range(reps):
            for name in order if r % 2 == 0 else order[::-1]:
                started = time.perf_counter()
                for scan in scans:
                    predictors[name].predict_volume(scan)
                times[name].append(time.perf_counter() - started)
        for name, t in times.items():
            row[f"{name}_s"] = statistics.median(t)
        if len(predictors) == 2:
            ratios = [a / b for a, b in zip(times["torch"], times["openvino"])]
            row.update(speedup=statistics.median(ratios), speedup_min=min(ratios), speedup_max=max(ratios))
            same = [float((a[0].array == b[0].array).mean()) for a, b in zip(outputs["torch"], outputs["openvino"])]
            prob = [float(np.abs(a[1].array.astype(np.float32) - b[1].array.astype(np.float32)).max())
                    for a, b in zip(outputs["torch"], outputs["openvino"])]  # fmt: skip
            row.update(equal_labels=float(np.mean(same)), max_prob_diff=max(prob))
        rows.append(row)
        print(f"   {os.environ.get('ONEDNN_MAX_CPU_ISA', 'default')} {model}: "
              + ", ".join(f"{k} {v:.3g}" for k, v in row.items() if isinstance(v, float)), flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = make_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--models", default=MODELS, help="comma-separated registry names")
    parser.add_argument("--cases", type=int, default=3, help="hippocampus scans per timed prediction")
    parser.add_argument("--isa", default="default,AVX2", help="oneDNN caps, one process each ('default': none)")
    parser.add_argument("--child", type=Path, default=None, help=argparse_hidden())
    args = parser.parse_args(argv)
    threads = apply_threads(args.threads)
    reps = args.reps or (1 if args.quick else 3)
    models = ["unet3d"] if args.quick else args.models.split(",")
    if args.child is not None:  # a child process: the run folders exist and are exported
        from medzoo.runtime import tune_malloc

        tune_malloc()  # as medzoo predict does
        rows = _child(args.child, models, reps, args.cases, args.quick)
        print("ROWS " + json.dumps(rows))
        return {"benchmark": NAME, "rows": rows}
    from medzoo.inference.backends import cached_onnx_export

    kwargs = {"features": [4, 8]} if args.quick else {}
    patch = (16, 16, 16) if args.quick else PATCH
    rows = []
    with tempfile.TemporaryDirectory(prefix="medzoo_bench_backends_") as tmp:
        export: dict[str, str] = {}
        for model in models:
            run = _run_folder(Path(tmp), model, patch, kwargs)
            started = time.perf_counter()
            made = cached_onnx_export(run)  # once, before the timed processes; a failure is reported
            export[model] = f"{time.perf_counter() - started:.1f} s" if made is not None else "failed"
        if args.quick:  # the smoke test: this process, this CPU
            rows = [{"isa": "default", **r, "export": export.get(r["model"], "")}
                    for r in _child(Path(tmp), models, reps, args.cases, args.quick)]  # fmt: skip
        for isa in [] if args.quick else args.isa.split(","):
            env = dict(os.environ)
            env.pop("ONEDNN_MAX_CPU_ISA", None)
            if isa != "default":
                env["ONEDNN_MAX_CPU_ISA"] = isa
            cmd = [sys.executable, "-m", "benchmarks.backends", "--child", tmp, "--models", ",".join(models),
                   "--reps", str(reps), "--cases", str(args.cases)] + (["--quick"] if args.quick else [])
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            sys.stdout.write("".join(line + "\n" for line in done.stdout.splitlines() if not line.startswith("ROWS")))
            found = [line[5:] for line in done.stdout.splitlines() if line.startswith("ROWS ")]
            if done.returncode or not found:
                rows.append({"isa": isa, "skipped": done.stderr.strip().splitlines()[-1:] or "no output"})
                continue
            for row in json.loads(found[0]):
                rows.append({"isa": isa, **row, "export": export.get(row["model"], "")})
    cols = ["isa", "model", "cases", "torch_layout", "torch_precision", "torch_s", "openvino_s", "speedup",
            "speedup_min", "speedup_max", "equal_labels", "max_prob_diff", "export"]
    print(f"== {NAME}: whole predictions, PyTorch (auto) vs OpenVINO, {threads} threads, {reps} rounds")
    print(format_table(rows, cols))
    results = {"benchmark": NAME, "environment": environment(), "threads": threads, "rows": rows,
               "markdown": markdown_table(rows, cols)}  # fmt: skip
    print(f"wrote {write_results(NAME, results, args.out)}")
    return results


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
