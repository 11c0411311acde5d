"""Prediction backends: the PyTorch network of a run folder, or an exported ONNX model under ONNX Runtime.

Both give a callable taking a torch tensor (N, C, *P) and returning (N, K, *P) plus the run's
:class:`~medzoo.planning.plan.Plan`, so :func:`~medzoo.inference.sliding_window.sliding_window` and the
predictor use them alike.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medzoo.errors import CheckpointError, ConfigError
from medzoo.planning.plan import Plan

log = logging.getLogger(__name__)

__all__ = ["BACKENDS", "OnnxModel", "load_backend", "read_card"]

BACKENDS = ("torch", "onnxruntime")


class OnnxModel:
    """An ONNX Runtime session behaving like a network: ``model(x: torch.Tensor) -> torch.Tensor``.

    Args:
        path: the ``.onnx`` file.
        device: "cpu" or "cuda" (CUDA provider used when ONNX Runtime has it).
        card: optional model card (size rule) forwarded to the sliding window.
        threads: intra-op threads (default: ONNX Runtime's choice).
    """

    def __init__(self, path: str | Path, device: str | torch.device | None = "cpu", card: Any = None,
                 threads: int | None = None) -> None:  # fmt: skip
        import onnxruntime as ort

        self.path = Path(path)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        providers = ["CPUExecutionProvider"]
        want_cuda = device is not None and torch.device(device).type == "cuda"
        if want_cuda and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types
            raise CheckpointError(f"{self.path}: ONNX Runtime cannot load this model ({err})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.card = card
        self.device = torch.device("cpu")  # inputs are handed over as CPU numpy arrays

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Run the session on (N, C, *P) float32; returns (N, K, *P) float32 on x's device."""
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        (out,) = self.session.run([self.output_name], {self.input_name: array})
        return torch.from_numpy(np.ascontiguousarray(out)).to(x.device)


def card_path(export_path: str | Path) -> Path:
    """The JSON card written beside an export: ``model.onnx`` -> ``model.json``."""
    return Path(export_path).with_suffix(".json")


def read_card(export_path: str | Path) -> dict[str, Any]:
    """Read the JSON card of an exported model (raises :class:`CheckpointError` if absent or invalid)."""
    path = card_path(export_path)
    if not path.is_file():
        raise CheckpointError(f"{export_path}: no model card {path.name} beside the export (re-run medzoo export)")
    try:
        card = json.loads(path.read_text())
        Plan.from_dict(card["plan"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: not a valid medzoo model card ({err})") from None
    return card


def _size_rule(plan: Plan) -> Any:
    try:
        from medzoo.models.registry import get_card

        return get_card(plan.model)
    except Exception:  # noqa: BLE001 - an unknown model just means "no size rule"
        return None


def load_backend(
    model_path: str | Path,
    backend: str = "torch",
    checkpoint: str = "best",
    device: str | torch.device | None = None,
) -> tuple[Any, Plan]:
    """The network callable and plan for prediction.

    Args:
        model_path: a run folder; for ``onnxruntime`` also an ``.onnx`` export (card beside it). A run
            folder without ``model.onnx`` is exported on the fly (to a temporary folder).
        backend: "torch" or "onnxruntime".
        checkpoint: "best" / "last" (run folders).
        device: "cpu" / "cuda"; default cuda when available.

    Returns:
        ``(model, plan)``.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    model_path = Path(model_path)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if backend == "torch":
        if model_path.is_file():
            raise ConfigError(
                f"{model_path}: the torch backend takes a run folder; use --backend onnxruntime for an export"
            )
        from medzoo.engine.checkpoint import load_model_from_run

        return load_model_from_run(model_path, which=checkpoint, device=device)

    if model_path.is_dir():
        export = model_path / "model.onnx"
        if not export.is_file():
            from medzoo.export import export_model

            tmp = Path(tempfile.mkdtemp(prefix="medzoo_onnx_"))
            log.info("%s has no model.onnx; exporting to %s", model_path, tmp)
            export = export_model(model_path, "onnx", out=tmp / "model.onnx", checkpoint=checkpoint).path
    elif model_path.suffix.lower() == ".onnx":
        export = model_path
    else:
        raise ConfigError(f"{model_path}: give a run folder or an .onnx export")
    card = read_card(export)
    plan = Plan.from_dict(card["plan"])
    return OnnxModel(export, device=device, card=_size_rule(plan)), plan
