"""Prediction backends on the CPU: PyTorch (card layout and default layout), ONNX Runtime and OpenVINO.

For each network (default: unet3d, segresnet, resnetmed3d_10, vnet_light, deeplabv3plus_resnet18), a run
folder with freshly initialised weights (1 channel, 3 classes, patch 64^3, z-score) predicts one
120x110x100 scan with an oblique affine through :class:`medzoo.inference.Predictor`, once per backend as
``medzoo.inference.backends.load_backend`` builds it:

- ``torch``: PyTorch in the layout :func:`medzoo.runtime.preferred_memory_format` picks (channels-last where
  the model's card says so), what ``--backend torch`` runs;
- ``torch_contiguous``: PyTorch in its default layout (``memory_format="contiguous"``);
- ``onnxruntime`` and ``openvino``: the run's cached ONNX export under each runtime (export and checks made
  before timing).

Backends are timed interleaved (median of ``--reps``), reported as seconds and as the ratio to ``torch``
(> 1: slower than PyTorch), with the share of voxels whose label equals ``torch_contiguous``'s. ``auto_pick``
is what ``backend="auto"`` chose by its race (:mod:`medzoo.inference.race`) and ``auto_over_best`` its
whole-prediction time over the faster of ``torch`` and ``openvino`` (1: the race picked the faster). Untrained
weights make many near-ties, so the agreement is a floor for trained networks.

Run: ``python -m benchmarks.backends [--quick] [--reps N] [--models a,b]``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import (
    apply_threads,
    environment,
    format_table,
    interleaved,
    make_parser,
    markdown_table,
    median,
    reps_for,
    write_results,
)

NAME = "backends"
MODELS = "unet3d,segresnet,resnetmed3d_10,vnet_light,deeplabv3plus_resnet18"
BACKENDS = ("torch", "torch_contiguous", "onnxruntime", "openvino")


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


def _scan(shape: tuple[int, int, int]):
    """A scan with smooth structure (so the networks' labels are not pure noise) on an oblique grid."""
    from medzoo.io.volume import Volume, make_affine

    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    array = np.sin(3 * grid[0]) * np.cos(2 * grid[1]) + grid[2] + 0.1 * rng.normal(size=shape)
    rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return Volume(array[None].astype(np.float32), make_affine((0.9, 1.1, 1.6), (10.0, -20.0, 5.0), rotation=rot))


def compare(model: str, root: Path, shape, patch, reps: int, warmup: int, model_kwargs=None) -> dict[str, Any]:
    """One row: each backend's median seconds, ratio to ``torch`` and label agreement."""
    from medzoo.inference.backends import load_backend
    from medzoo.inference.predictor import Predictor

    run = _run_folder(root, model, patch, model_kwargs or {})
    image = _scan(shape)
    predictors = {}
    for name in BACKENDS:
        backend = "torch" if name.startswith("torch") else name
        try:
            net, plan = load_backend(run, backend=backend, device="cpu")
        except Exception as err:  # noqa: BLE001 - a runtime that is missing or refuses the model
            predictors[name] = f"{type(err).__name__}: {err}"[:200]
            continue
        layout = "contiguous" if name == "torch_contiguous" else "auto"
        predictors[name] = Predictor(net, plan, device="cpu", memory_format=layout)
    ready = {k: v for k, v in predictors.items() if not isinstance(v, str)}
    # what "auto" picks (its one-off race of OpenVINO against PyTorch, on one batch of windows)
    auto_net, _ = load_backend(run, backend="auto", device="cpu")
    auto_pick = "torch" if isinstance(auto_net, torch.nn.Module) else "openvino"  # a run folder: one of the two
    del auto_net
    labels = {k: p.predict_volume(image).array[0] for k, p in ready.items()}
    times = interleaved({k: (lambda p=p: p.predict_volume(image)) for k, p in ready.items()}, reps, warmup)
    sec = {k: median(v) for k, v in times.items()}
    row: dict[str, Any] = {"model": model, "scan": "x".join(map(str, shape)), "patch": "x".join(map(str, patch)),
                           "torch_layout": str(ready["torch"].memory_format or "contiguous").removeprefix("torch.")}
    row["auto_pick"] = auto_pick
    if auto_pick in sec and "openvino" in sec:  # 1.0: the race picked the faster of the two
        row["auto_over_best"] = sec[auto_pick] / min(sec["torch"], sec["openvino"])
    reference = labels.get("torch_contiguous")
    for k in BACKENDS:
        if k not in ready:
            row[f"{k}_skipped"] = predictors[k]
            continue
        row[f"{k}_s"] = sec[k]
        row[f"{k}_over_torch"] = sec[k] / sec["torch"]
        if reference is not None:
            row[f"{k}_label_agreement"] = float((labels[k] == reference).mean())
    return row


def main(argv: list[str] | None = None) -> dict:
    parser = make_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("--models", default=MODELS, help="comma-separated registry names")
    args = parser.parse_args(argv)
    threads = apply_threads(args.threads)
    reps = reps_for(args, default=3, quick=1)
    if args.quick:
        shape, patch, models, kwargs = (20, 18, 17), (16, 16, 16), ["unet3d"], {"features": [4, 8]}
    else:
        shape, patch, models, kwargs = (120, 110, 100), (64, 64, 64), args.models.split(","), None
    from medzoo.runtime import tune_malloc

    tune_malloc()  # as medzoo predict does
    rows = []
    with tempfile.TemporaryDirectory(prefix="medzoo_bench_backends_") as tmp:
        for model in models:
            rows.append(compare(model, Path(tmp), shape, patch, reps, args.warmup, kwargs))
            print(f"   {model}: " + ", ".join(f"{k} {v:.2f}" for k, v in rows[-1].items() if k.endswith("_s")),
                  flush=True)
    cols = ["model", "torch_layout", "auto_pick", "auto_over_best"] + [
        f"{k}_{c}" for k in BACKENDS for c in ("s", "over_torch")] + [
        f"{k}_label_agreement" for k in BACKENDS if k != "torch_contiguous"]
    print(f"== {NAME}: predict one {shape} scan per backend, {threads} threads")
    print(format_table(rows, cols))
    results = {"benchmark": NAME, "environment": environment(), "threads": threads, "rows": rows,
               "markdown": markdown_table(rows, cols)}  # fmt: skip
    print(f"wrote {write_results(NAME, results, args.out)}")
    return results


if __name__ == "__main__":
    main()
