"""Export a trained network to ONNX or TorchScript, checked against PyTorch, with a JSON card beside it.

The card (``model.onnx`` -> ``model.json``) holds everything prediction needs besides the weights: the
plan (preprocessing, patch size, labels, modalities), the input/output names and which axes are dynamic,
and the check that was run. ``medzoo predict --backend onnxruntime --model model.onnx`` uses it.

ONNX: opset 17 by default, batch and spatial axes dynamic when the exported graph accepts another size
(checked by running a second, differently sized input through ONNX Runtime; otherwise the export is redone
with fixed spatial axes, checked on a second batch at the patch size, and the card says so). TorchScript:
``torch.jit.script`` when the model scripts, else ``torch.jit.trace``; the card's ``dynamic_axes`` lists only
the axes a second input of that kind really passed through (a trace may fix the spatial size, and even the
batch size).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medzoo.errors import ConfigError, ModelError
from medzoo.planning.plan import Plan
from medzoo.utils import atomic_write, atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["FORMATS", "ExportResult", "export_model", "export_network"]

FORMATS = ("onnx", "torchscript")
_DEFAULT_NAMES = {"onnx": "model.onnx", "torchscript": "model_torchscript.pt"}
INPUT_NAME, OUTPUT_NAME = "image", "logits"


@dataclass
class ExportResult:
    """What :func:`export_model` wrote.

    Attributes:
        path: the exported network file.
        card_path: its JSON card.
        max_abs_diff: largest |export - PyTorch| on the random check input.
        dynamic_spatial: whether spatial axes are dynamic (ONNX; TorchScript always is when scripted).
        dynamic_batch: whether another batch size passed the check (always for ONNX, which is not written
            otherwise; a TorchScript trace may have fixed it).
    """

    path: Path
    card_path: Path
    max_abs_diff: float
    dynamic_spatial: bool
    dynamic_batch: bool = True


def _example_input(plan: Plan, seed: int, grow: int = 0, batch: int = 1) -> torch.Tensor:
    """Random (batch, in_channels, *patch) input; ``grow`` adds a valid size step per axis."""
    from medzoo.models.registry import get_card

    try:
        card = get_card(plan.model)
        step = max(card.size_divisor, 1)
    except Exception:  # noqa: BLE001 - unknown model: no size rule
        card, step = None, 1
    shape = [int(p) + grow * step for p in plan.patch_size]
    if card is not None:
        shape = [card.valid_size(s) for s in shape]
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, plan.in_channels, *shape), generator=g)


def _onnx_export(model: nn.Module, x: torch.Tensor, path: Path, opset: int, dynamic: bool) -> None:
    spatial = {i + 2: f"size{i}" for i in range(x.ndim - 2)}
    axes = {0: "batch", **spatial} if dynamic else {0: "batch"}
    kwargs: dict[str, Any] = {
        "input_names": [INPUT_NAME],
        "output_names": [OUTPUT_NAME],
        "opset_version": opset,
        "dynamic_axes": {INPUT_NAME: axes, OUTPUT_NAME: axes},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:  # the TorchScript-based exporter: fast and handles dynamic axes directly
            torch.onnx.export(model, (x,), str(path), dynamo=False, **kwargs)
        except TypeError:  # a torch without the dynamo switch
            torch.onnx.export(model, (x,), str(path), **kwargs)


def _run_onnx(path: Path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def _torch_out(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        out = model(x)
    if isinstance(out, (list, tuple)):
        out = out[0]
    return out.float().numpy()


def _check(name: str, got: np.ndarray, want: np.ndarray, atol: float) -> float:
    """Max |export - PyTorch|; raises when it exceeds ``atol`` on the outputs' scale, max(1, max |PyTorch|)."""
    if got.shape != want.shape:
        raise ModelError(f"{name}: export output shape {got.shape} != PyTorch {want.shape}")
    diff = float(np.abs(got.astype(np.float64) - want).max())
    allowed = atol * max(1.0, float(np.abs(want).max()))
    if diff > allowed:
        raise ModelError(f"{name}: export differs from PyTorch by {diff:.2e} (> {allowed:.2e}: {atol:g} of the "
                         "outputs' scale); not written")
    return diff


def export_network(
    model: nn.Module,
    plan: Plan,
    path: str | Path,
    format: str = "onnx",
    *,
    opset: int = 17,
    atol: float = 1e-4,
    seed: int = 0,
    extra_card: dict[str, Any] | None = None,
    dynamic_spatial: bool = True,
) -> ExportResult:
    """Export ``model`` (built from ``plan``) to ``path`` and write its JSON card beside it.

    Args:
        model: the network (moved to CPU, eval mode).
        plan: its plan (patch size, channels, labels, preprocessing).
        path: output file (``.onnx`` / ``.pt``); the card goes to ``path.with_suffix(".json")``.
        format: "onnx" or "torchscript".
        opset: ONNX opset (>= 17).
        atol: largest allowed |export - PyTorch| on a random input, on the outputs' scale (times
            max(1, max |PyTorch output|)); a worse export is not written.
        seed: seed of the random check input.
        extra_card: more entries for the card (e.g. the source run).
        dynamic_spatial: ONNX: try spatial axes of any size (the batch axis always is). False fixes them to
            the plan's patch size (grown to the model's size rule), the only size the sliding window feeds,
            which lets the runtimes plan for one shape.

    Returns:
        An :class:`ExportResult`.
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown export format '{format}'; choose one of {', '.join(FORMATS)}")
    if opset < 17:
        raise ConfigError(f"ONNX opset must be >= 17, got {opset}")
    path = Path(path)
    model = model.to("cpu").eval()
    x = _example_input(plan, seed)
    x_other = _example_input(plan, seed + 1, grow=int(dynamic_spatial), batch=2)  # another batch (and size)
    want, want_other = _torch_out(model, x), _torch_out(model, x_other)

    def check_batch(run: Callable[[torch.Tensor], np.ndarray]) -> None:
        """Raise unless ``run`` gives PyTorch's output for another batch at the patch size: what a graph with
        fixed spatial axes must still take (the sliding window feeds batches of windows)."""
        x_batch = x_other if not dynamic_spatial else _example_input(plan, seed + 1, batch=2)
        want_batch = want_other if not dynamic_spatial else _torch_out(model, x_batch)
        try:
            got = run(x_batch)
        except Exception as err:  # noqa: BLE001 - the runtime's own error, with its reason, in ours
            raise ModelError(f"{path.name}: the exported graph does not take a batch of {x_batch.shape[0]} "
                             f"({type(err).__name__}: {err}); not written") from err
        _check(path.name, got, want_batch, atol)

    dynamic, batch_dynamic = True, True
    if format == "onnx":
        def write(tmp: Path) -> None:
            nonlocal dynamic, diff
            dynamic = dynamic_spatial
            _onnx_export(model, x, tmp, opset, dynamic=dynamic)
            diff = _check(path.name, _run_onnx(tmp, x), want, atol)
            try:
                _check(path.name, _run_onnx(tmp, x_other), want_other, atol)
            except Exception as err:  # noqa: BLE001 - the graph is not size-generic: fix spatial axes
                if not dynamic_spatial:  # already fixed: the batch axis itself does not work
                    raise
                log.warning("%s: dynamic spatial axes do not work (%s); exporting fixed sizes", path, err)
                dynamic = False
                _onnx_export(model, x, tmp, opset, dynamic=False)
                diff = _check(path.name, _run_onnx(tmp, x), want, atol)
                check_batch(lambda batch: _run_onnx(tmp, batch))  # the batch axis must still work
    else:
        def write(tmp: Path) -> None:
            nonlocal dynamic, batch_dynamic, diff
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    module = torch.jit.script(model)
                    method = "script"
                except Exception as err:  # noqa: BLE001 - many models do not script; trace instead
                    log.info("torch.jit.script failed (%s); tracing", type(err).__name__)
                    module = torch.jit.trace(model, x, check_trace=False)
                    method = "trace"
            diff = _check(path.name, _torch_out(module, x), want, atol)
            try:
                _check(path.name, _torch_out(module, x_other), want_other, atol)
            except Exception:  # noqa: BLE001 - a trace fixed the spatial size, and maybe the batch size too
                dynamic = False
                try:
                    check_batch(lambda batch: _torch_out(module, batch))
                except Exception as err:  # noqa: BLE001
                    batch_dynamic = False
                    log.warning("%s: the TorchScript module only takes a batch of 1 (%s)", path, err)
            extra["torchscript_method"] = method
            module.save(str(tmp))

    diff = float("nan")
    extra: dict[str, Any] = {}
    atomic_write(path, write)
    batch_axis: str | int = "batch" if batch_dynamic else 1
    card = {
        "format": format,
        "file": path.name,
        "model": plan.model,
        "labels": {str(k): v for k, v in plan.labels.items()},
        "modalities": list(plan.modalities),
        "patch_size": list(plan.patch_size),
        "input": {"name": INPUT_NAME, "shape": [batch_axis, plan.in_channels, *plan.patch_size]},
        "output": {"name": OUTPUT_NAME, "shape": [batch_axis, plan.num_classes, *plan.patch_size]},
        "dynamic_axes": (["batch"] if batch_dynamic else []) + (["spatial"] if dynamic else []),
        "opset": opset if format == "onnx" else None,
        "check": {"max_abs_diff": diff, "atol": atol, "seed": seed},
        "plan": plan.to_dict(),
        **extra,
        **(extra_card or {}),
    }
    card_file = atomic_write_text(path.with_suffix(".json"), json.dumps(card, indent=2))
    log.info("exported %s (%s, max |diff| %.2e) and %s", path, format, diff, card_file.name)
    return ExportResult(path, card_file, diff, dynamic, batch_dynamic)


def export_model(
    run_dir: str | Path,
    format: str = "onnx",
    out: str | Path | None = None,
    *,
    checkpoint: str = "best",
    opset: int = 17,
    atol: float = 1e-4,
    dynamic_spatial: bool = True,
) -> ExportResult:
    """Export the network of a run folder.

    Args:
        run_dir: the run folder (plan.json + checkpoints).
        format: "onnx" or "torchscript".
        out: output file; default ``RUN/model.onnx`` or ``RUN/model_torchscript.pt``.
        checkpoint: "best" or "last".
        opset, atol, dynamic_spatial: see :func:`export_network`.

    Returns:
        An :class:`ExportResult`.
    """
    from medzoo.engine.checkpoint import load_model_from_run

    if format not in FORMATS:
        raise ConfigError(f"unknown export format '{format}'; choose one of {', '.join(FORMATS)}")
    model, plan = load_model_from_run(run_dir, which=checkpoint, device="cpu")
    path = Path(out) if out is not None else Path(run_dir) / _DEFAULT_NAMES[format]
    if path.is_dir():
        path = path / _DEFAULT_NAMES[format]
    return export_network(
        model, plan, path, format, opset=opset, atol=atol, dynamic_spatial=dynamic_spatial,
        extra_card={"source_run": str(Path(run_dir).resolve()), "checkpoint": checkpoint},
    )  # fmt: skip
