"""Prediction backends: the PyTorch network of a run folder, or an exported ONNX model under ONNX Runtime.

Both give a callable taking a torch tensor (N, C, *P) and returning (N, K, *P) plus the run's
:class:`~medzoo.planning.plan.Plan`, so :func:`~medzoo.inference.sliding_window.sliding_window` and the
predictor use them alike.

The default, ``"auto"``, picks ONNX Runtime on the CPU and PyTorch elsewhere. On this project's CPU, ONNX
Runtime ran the same U-Net forward 1.5-1.9x faster than eager PyTorch (``benchmarks/sliding_window.py``).
The run's network is exported once per checkpoint (checked against PyTorch on a random input, max |diff|
1e-4) and cached in ``RUN/.medzoo_cache/``; a network that cannot be exported, or a run folder that cannot
be written, falls back to PyTorch (exporting to a temporary folder in the second case).
"""

from __future__ import annotations

import hashlib
import importlib.util
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

__all__ = ["BACKENDS", "OnnxModel", "cached_onnx_export", "load_backend", "read_card", "resolve_backend"]

BACKENDS = ("auto", "torch", "onnxruntime")
CACHE_DIR = ".medzoo_cache"


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
            options.inter_op_num_threads = 1
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


def resolve_backend(backend: str, model_path: str | Path, device: str | torch.device) -> str:
    """The backend ``"auto"`` stands for: ONNX Runtime for an ``.onnx`` file or on the CPU (when installed),
    else PyTorch. Other names are returned unchanged (after checking them)."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    if Path(model_path).is_file():
        return "onnxruntime"
    if torch.device(device).type != "cpu":
        return "torch"
    have_ort = all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))
    return "onnxruntime" if have_ort else "torch"


def _checkpoint_key(checkpoint_file: Path) -> str:
    """Cache key of a checkpoint: its name, size and modification time, and the torch/ONNX Runtime versions."""
    import onnxruntime

    stat = checkpoint_file.stat()
    raw = json.dumps([checkpoint_file.name, stat.st_size, stat.st_mtime_ns, torch.__version__, onnxruntime.__version__])
    return hashlib.sha1(raw.encode()).hexdigest()[:12]


def cached_onnx_export(run_dir: str | Path, checkpoint: str = "best") -> Path | None:
    """The ONNX export of a run's checkpoint, made on first use and cached in ``RUN/.medzoo_cache/``.

    The export is checked against PyTorch (see :func:`medzoo.export.export_network`). A new or rewritten
    checkpoint gets a new export. When the run folder cannot be written, the export goes to a temporary
    folder for this process only.

    Args:
        run_dir: the run folder.
        checkpoint: "best", "last" or a checkpoint file name/path.

    Returns:
        The ``.onnx`` path (its card beside it), or None when the network cannot be exported faithfully
        (remembered in the cache, so the next call does not try again).
    """
    from medzoo.engine.checkpoint import checkpoint_path
    from medzoo.export import export_model

    run_dir = Path(run_dir)
    ckpt = checkpoint_path(run_dir, checkpoint)
    if not ckpt.is_file():
        raise CheckpointError(f"{run_dir}: no checkpoint '{checkpoint}' ({ckpt.name} not found)")
    key = _checkpoint_key(ckpt)
    cache = run_dir / CACHE_DIR
    path, failed = cache / f"model_{key}.onnx", cache / f"model_{key}.failed"
    if path.is_file() and card_path(path).is_file():
        return path
    if failed.is_file():
        log.info("%s: cannot be exported to ONNX (see %s); using PyTorch", ckpt, failed)
        return None
    try:
        cache.mkdir(exist_ok=True)
        probe = cache / f".write_test_{key}"
        probe.touch()
        probe.unlink()
    except OSError:
        path = Path(tempfile.mkdtemp(prefix="medzoo_onnx_")) / "model.onnx"
        failed = None
        log.info("%s is not writable; exporting to %s for this run only", run_dir, path.parent)
    log.info("exporting %s to ONNX for ONNX Runtime (once per checkpoint)", ckpt)
    try:
        export_model(run_dir, "onnx", out=path, checkpoint=str(ckpt))
    except Exception as err:  # noqa: BLE001 - any export failure means: predict with PyTorch instead
        log.warning("%s: ONNX export failed (%s: %s); predicting with PyTorch", ckpt, type(err).__name__, err)
        if failed is not None:
            try:
                failed.write_text(f"{type(err).__name__}: {err}\n")
            except OSError:
                pass
        return None
    return path


def load_backend(
    model_path: str | Path,
    backend: str = "auto",
    checkpoint: str = "best",
    device: str | torch.device | None = None,
) -> tuple[Any, Plan]:
    """The network callable and plan for prediction.

    Args:
        model_path: a run folder; for ``onnxruntime`` also an ``.onnx`` export (card beside it). A run
            folder without ``model.onnx`` is exported on the fly (to a temporary folder).
        backend: "auto" (ONNX Runtime on the CPU through a cached export, PyTorch elsewhere or when the
            network does not export; see :func:`resolve_backend`), "torch" or "onnxruntime".
        checkpoint: "best" / "last" (run folders).
        device: "cpu" / "cuda"; default cuda when available.

    Returns:
        ``(model, plan)``.
    """
    model_path = Path(model_path)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = resolve_backend(backend, model_path, device)
    if backend == "auto" and chosen == "onnxruntime" and model_path.is_dir():
        export = cached_onnx_export(model_path, checkpoint)
        if export is not None:
            return _onnx_backend(export, device)
        chosen = "torch"
    if chosen == "torch":
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
    return _onnx_backend(export, device)


def _onnx_backend(export: Path, device: str | torch.device) -> tuple[OnnxModel, Plan]:
    card = read_card(export)
    plan = Plan.from_dict(card["plan"])
    threads = torch.get_num_threads() if torch.device(device).type == "cpu" else None
    return OnnxModel(export, device=device, card=_size_rule(plan), threads=threads), plan
