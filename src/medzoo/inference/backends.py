"""Prediction runtimes: the PyTorch network of a run folder, or its ONNX export under OpenVINO or ONNX Runtime.

Each gives a callable taking a torch tensor (N, C, *P) and returning (N, K, *P) plus the run's
:class:`~medzoo.planning.plan.Plan`, so :func:`~medzoo.inference.sliding_window.sliding_window` and the
predictor use them alike.

The default, ``"auto"``, is a fixed rule (:func:`resolve_backend`), no timing: on the CPU a run folder is
predicted by OpenVINO (fp32) unless PyTorch would run in bf16 there (a CPU with native bf16, or
``amp="bf16"``), OpenVINO is not installed, or the network does not export or check; an ``.onnx`` file by
OpenVINO, else ONNX Runtime; on a GPU, PyTorch. ``docs/benchmarks.md`` ("Prediction backends") has the
measurements behind the rule and the command that makes them. ONNX Runtime is never the choice for a run
folder: it runs ``.onnx`` files and ``--backend onnxruntime``.

A run's network is exported once per checkpoint into ONE cache file, ``RUN/.medzoo_cache/model_<key>.onnx``:
checked against PyTorch when written, with OpenVINO's check against PyTorch stored in the file's metadata
(a network that cannot be exported leaves ``model_<key>.failed`` instead, so it is not tried again). Every
check between runtimes is on the scale of the outputs: max |a - b| <= tolerance x max(1, max |reference|).
The export records its own SHA-256: a damaged cache file is made again, with one warning. Processes that
start predicting with one run at once export it once (the others wait for it). A run folder that cannot be
written exports to a temporary folder for this process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medzoo.errors import CheckpointError, ConfigError, MedzooError
from medzoo.planning.plan import Plan

log = logging.getLogger(__name__)

__all__ = [
    "BACKENDS", "OnnxModel", "OpenVinoModel", "cached_onnx_export", "load_backend", "outputs_agree", "read_card",
    "resolve_backend",
]

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
OPENVINO_TOLERANCE = 1e-3  # OpenVINO vs PyTorch (or ONNX Runtime): max |diff| / max(1, max |logit|)
CACHE_DIR = ".medzoo_cache"
_EXPORT_STYLE = "opset17-fixed-spatial-checked"  # part of the cache key: a change in how we export makes a new file
_CHECK_KEY = "medzoo_check"  # the ONNX metadata entry holding the checks of a cached export
_SHA_KEY = "medzoo_sha256"  # ... and the SHA-256 of the rest of the file, to tell a damaged copy


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


class OpenVinoModel:
    """An OpenVINO model compiled for the CPU, behaving like a network: ``model(x: torch.Tensor) -> torch.Tensor``.

    Args:
        path: the ``.onnx`` file.
        card: optional model card (size rule) forwarded to the sliding window.
        threads: inference threads (default: OpenVINO's choice).
    """

    def __init__(self, path: str | Path, card: Any = None, threads: int | None = None) -> None:
        import openvino

        self.path = Path(path)
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            core = openvino.Core()
            self.compiled = core.compile_model(core.read_model(str(self.path)), "CPU", config)
        except Exception as err:  # noqa: BLE001 - OpenVINO raises its own exception types
            raise CheckpointError(f"{self.path}: OpenVINO cannot compile this model ({err})") from None
        self.request = self.compiled.create_infer_request()
        self.card = card
        self.device = torch.device("cpu")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Run on (N, C, *P) float32; returns (N, K, *P) float32 on x's device (a copy: the request's output
        buffer is reused by the next call)."""
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        out = self.request.infer({0: array})[0]
        return torch.from_numpy(np.array(out, dtype=np.float32, copy=True)).to(x.device)


def outputs_agree(got: Any, want: Any, tolerance: float) -> dict[str, Any]:
    """Compare two runtimes' outputs on the scale of the reference: ``ok`` when
    max |got - want| <= ``tolerance`` x max(1, max |want|). Also reports the share of equal argmax labels."""
    got_np = np.asarray(got, dtype=np.float64)
    want_np = np.asarray(want, dtype=np.float64)
    if got_np.shape != want_np.shape:
        return {"ok": False, "reason": f"output shape {got_np.shape} != {want_np.shape}"}
    diff = float(np.abs(got_np - want_np).max())
    allowed = float(tolerance) * max(1.0, float(np.abs(want_np).max()))
    labels = float((got_np.argmax(1) == want_np.argmax(1)).mean()) if got_np.ndim > 1 else 1.0
    return {"ok": bool(diff <= allowed), "max_abs_diff": diff, "allowed": allowed, "equal_labels": labels}


def card_path(export_path: str | Path) -> Path:
    """The JSON card written beside an export: ``model.onnx`` -> ``model.json``."""
    return Path(export_path).with_suffix(".json")


def read_card(export_path: str | Path) -> dict[str, Any]:
    """Read the JSON card of an exported model (raises :class:`CheckpointError` if absent or invalid)."""
    path = card_path(export_path)
    if not path.is_file():
        raise CheckpointError(f"{export_path}: no model card {path.name} beside the export (re-run medzoo export)")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
        Plan.from_dict(card["plan"])
    except (ValueError, KeyError, TypeError, AttributeError, MedzooError) as err:  # ValueError: bad JSON/UTF-8
        raise CheckpointError(f"{path}: not a valid medzoo model card ({type(err).__name__}: {err})") from None
    return card


def _size_rule(plan: Plan) -> Any:
    try:
        from medzoo.models.registry import get_card

        return get_card(plan.model)
    except Exception:  # noqa: BLE001 - an unknown model just means "no size rule"
        return None


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(name) is not None for name in modules)


def _torch_cpu_dtype(amp: str) -> torch.dtype | None:
    """The autocast dtype PyTorch predicts in on the CPU for ``amp`` (None: fp32; fp16 is fp32 there, and the
    predictor itself warns about it): :func:`medzoo.runtime.autocast_dtype`."""
    from medzoo import runtime

    return runtime.autocast_dtype("none" if amp == "fp16" else amp, "cpu", "predicting")


def resolve_backend(backend: str, model_path: str | Path, device: str | torch.device, amp: str = "none") -> str:
    """The runtime ``"auto"`` stands for (other names are returned unchanged, after checking them).

    On the CPU: a run folder goes to OpenVINO (when it and onnx, for the export, are installed) unless
    PyTorch would predict in bf16 (``amp``: "bf16", or "auto" on a CPU with native bf16), which then runs
    it; an ``.onnx`` file goes to OpenVINO, else ONNX Runtime. On a GPU: PyTorch (ONNX Runtime for a file).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    is_file = Path(model_path).is_file()
    if torch.device(device).type != "cpu":
        return "onnxruntime" if is_file else "torch"
    if is_file:
        return "openvino" if _installed("openvino") else "onnxruntime"
    if _installed("onnx", "openvino") and _torch_cpu_dtype(amp) is None:
        return "openvino"
    return "torch"


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "-"


def _checkpoint_key(checkpoint_file: Path) -> str:
    """Cache key of a checkpoint: its name, size and modification time, how we export, and the versions of
    the packages that make or run the export (an upgrade of any of them makes a new export and check)."""
    stat = checkpoint_file.stat()
    versions = [_version(name) for name in ("medzoo", "torch", "onnx", "onnxruntime", "openvino")]
    raw = json.dumps([checkpoint_file.name, stat.st_size, stat.st_mtime_ns, _EXPORT_STYLE, *versions])
    return hashlib.sha1(raw.encode()).hexdigest()[:12]


def export_checks(path: str | Path) -> dict[str, Any] | None:
    """The checks stored in a cached export's metadata (``{"openvino": verdict or None, "plan": the run's
    plan}``); None when the file is damaged or holds no checks (an export written by ``medzoo export``, whose
    card is beside it)."""
    checks, _ = _read_export(Path(path))
    return checks


def _export_problem(path: Path) -> str | None:
    """Why the cached export ``path`` cannot be used, or None when it is whole."""
    if not path.is_file():
        return "not exported yet"
    return _read_export(path)[1]


_READ: dict[tuple[str, int, int, int], tuple[dict[str, Any], None]] = {}  # whole exports read in this process


def _read_export(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(checks, None)`` for a whole cached export, ``(None, why not)`` otherwise (a whole one is read once
    per process while its size and modification time stay the same)."""
    try:
        stat = path.stat()
    except OSError as err:
        return None, f"{path}: cannot be read ({err})"
    key = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _READ:
        checks, problem = _parse_export(path)
        if problem is not None:
            return None, problem
        _READ[key] = (checks, None)
    return _READ[key]


def _parse_export(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - onnx raises several types for a damaged file
        return None, f"{path}: not a readable ONNX file ({type(err).__name__})"
    props = {prop.key: prop.value for prop in model.metadata_props}
    if _SHA_KEY not in props or _CHECK_KEY not in props:
        return None, f"{path}: holds no medzoo checks"
    if props[_SHA_KEY] != _proto_sha256(model):
        return None, f"{path}: does not match the SHA-256 recorded in it"
    try:
        checks = json.loads(props[_CHECK_KEY])
    except ValueError:
        return None, f"{path}: its checks are not valid JSON"
    return (checks, None) if isinstance(checks, dict) else (None, f"{path}: its checks are not a JSON object")


def _proto_sha256(model: Any) -> str:
    """SHA-256 of an ONNX model without its own ``_SHA_KEY`` entry."""
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != _SHA_KEY]
    copy = type(model)()
    copy.CopyFrom(model)
    del copy.metadata_props[:]
    for key, value in kept:
        entry = copy.metadata_props.add()
        entry.key, entry.value = key, value
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def cached_onnx_export(run_dir: str | Path, checkpoint: str = "best") -> Path | None:
    """The ONNX export of a run's checkpoint, made on first use and cached in ``RUN/.medzoo_cache/``.

    The export is checked against PyTorch (see :func:`medzoo.export.export_network`), then, when OpenVINO is
    installed, OpenVINO's output is checked against PyTorch's too and the verdict stored in the file. Its
    spatial axes are fixed to the network's window (the sliding window only feeds windows of that size), or
    size-generic for the graphs that only export that way. A new or rewritten checkpoint gets a new export.

    Args:
        run_dir: the run folder.
        checkpoint: "best", "last" or a checkpoint file name/path.

    Returns:
        The ``.onnx`` path, or None when the network cannot be exported faithfully (remembered in the cache
        as ``model_<key>.failed``, so the next call does not try again).
    """
    from medzoo.engine.checkpoint import checkpoint_path
    from medzoo.utils import locked

    run_dir = Path(run_dir)
    ckpt = checkpoint_path(run_dir, checkpoint)
    if not ckpt.is_file():
        raise CheckpointError(f"{run_dir}: no checkpoint '{checkpoint}' ({ckpt.name} not found)")
    key = _checkpoint_key(ckpt)
    cache = run_dir / CACHE_DIR
    path, failed = cache / f"model_{key}.onnx", cache / f"model_{key}.failed"
    if _export_problem(path) is None:
        return path
    if _export_failed(failed, ckpt):
        return None
    if not _writable(cache):
        path = Path(tempfile.mkdtemp(prefix="medzoo_onnx_")) / "model.onnx"
        log.info("%s is not writable; exporting to %s for this run only", run_dir, path.parent)
        return _export(run_dir, ckpt, path, failed=None)
    with locked(cache):  # one process exports; the others wait here, then take its export
        problem = _export_problem(path)
        if problem is None:
            return path
        if _export_failed(failed, ckpt):
            return None
        if path.exists():
            log.warning("%s; discarding the cached export and exporting it again", problem)
            path.unlink()
        for leftover in cache.glob(".export-*"):  # from a process killed while exporting
            shutil.rmtree(leftover, ignore_errors=True)
        return _export(run_dir, ckpt, path, failed)


def _export_failed(note: Path, ckpt: Path) -> bool:
    """Whether an earlier process noted that this checkpoint cannot be exported (a damaged note is removed)."""
    try:
        text = note.read_bytes().decode("utf-8").strip()
    except OSError:  # none (or no cache folder at all)
        return False
    except UnicodeDecodeError:
        text = ""
    if not text:
        log.warning("%s: discarding a damaged note; trying the export again", note)
        note.unlink(missing_ok=True)
        return False
    log.info("%s: cannot be exported to ONNX (see %s); using PyTorch", ckpt, note)
    return True


def _export(run_dir: Path, ckpt: Path, path: Path, failed: Path | None) -> Path | None:
    """Export (see :func:`_export_checked`); on failure note it in ``failed`` (when given) and return None."""
    from medzoo.utils import atomic_write_text

    log.info("exporting %s to ONNX (once per checkpoint)", ckpt)
    try:
        _export_checked(run_dir, ckpt, path)
    except Exception as err:  # noqa: BLE001 - any export failure means: predict with PyTorch instead
        log.warning("%s: ONNX export failed (%s: %s); predicting with PyTorch", ckpt, type(err).__name__, err)
        if failed is not None and not isinstance(err, OSError):  # a full disk is not the network's fault
            try:
                atomic_write_text(failed, f"{type(err).__name__}: {err}\n")
            except OSError:
                pass
        return None
    return path


def _writable(cache: Path) -> bool:
    try:
        cache.mkdir(exist_ok=True)
        probe = Path(tempfile.mkstemp(prefix=".write_test_", dir=cache)[1])
        probe.unlink()
        return True
    except OSError:
        return False


def _export_checked(run_dir: Path, ckpt: Path, path: Path) -> None:
    """Export the checkpoint to ``path`` (one file: the card and checks are not kept beside it) with the
    OpenVINO check in its metadata."""
    import onnx

    from medzoo.engine.checkpoint import load_model_from_run
    from medzoo.export import export_network
    from medzoo.utils import atomic_write

    model, plan = load_model_from_run(run_dir, which=str(ckpt), device="cpu")
    with tempfile.TemporaryDirectory(prefix=".export-", dir=path.parent) as tmp:
        onnx_file = Path(tmp) / "model.onnx"
        try:
            export_network(model, plan, onnx_file, dynamic_spatial=False)
        except Exception as err:  # noqa: BLE001 - some graphs only export with size-generic axes
            log.info("%s: fixed-size ONNX export failed (%s); trying size-generic axes", ckpt, err)
            export_network(model, plan, onnx_file, dynamic_spatial=True)
        verdict = _check_openvino(onnx_file, plan, model) if _installed("openvino") else None
        proto = onnx.load(str(onnx_file))
        entry = proto.metadata_props.add()
        entry.key, entry.value = _CHECK_KEY, json.dumps({"openvino": verdict, "plan": plan.to_dict()})
        digest = _proto_sha256(proto)
        entry = proto.metadata_props.add()
        entry.key, entry.value = _SHA_KEY, digest
        atomic_write(path, lambda target: target.write_bytes(proto.SerializeToString(deterministic=True)))


def _check_input(plan: Plan) -> torch.Tensor:
    """Two random windows of the size the sliding window feeds (the plan's patch grown to the size rule)."""
    card = _size_rule(plan)
    window = [int(card.valid_size(p)) if card is not None else int(p) for p in plan.patch_size]
    return torch.randn((2, plan.in_channels, *window), generator=torch.Generator().manual_seed(0))


def _check_openvino(export: Path, plan: Plan, reference: Any) -> dict[str, Any]:
    """OpenVINO's output against ``reference``'s (the PyTorch network, or an ONNX Runtime session) on two
    random windows, on the outputs' scale (:func:`outputs_agree` with ``OPENVINO_TOLERANCE``)."""
    x = _check_input(plan)
    try:
        got = OpenVinoModel(export, threads=_cpu_threads("cpu"))(x)
    except CheckpointError as err:
        return {"ok": False, "reason": str(err)}
    with torch.inference_mode():
        want = reference(x)
    want = want[0] if isinstance(want, (list, tuple)) else want  # deep supervision: the full-resolution head
    verdict = outputs_agree(got.numpy(), want.float().numpy(), OPENVINO_TOLERANCE)
    log.info("OpenVINO vs %s on %s: %s", type(reference).__name__, export.name, verdict)
    return verdict


def load_backend(
    model_path: str | Path,
    backend: str = "auto",
    checkpoint: str = "best",
    device: str | torch.device | None = None,
    batch_size: int = 4,
    amp: str = "none",
) -> tuple[Any, Plan]:
    """The network callable and plan for prediction.

    Args:
        model_path: a run folder; for ``onnxruntime`` / ``openvino`` also an ``.onnx`` export (card beside
            it). With ``onnxruntime``, a run folder's ``model.onnx`` (from ``medzoo export``) is used when
            present, else the cached export (:func:`cached_onnx_export`).
        backend: "auto" (see :func:`resolve_backend`; PyTorch also when the network does not export or
            OpenVINO fails its check; an ``.onnx`` file then runs under ONNX Runtime), "torch",
            "onnxruntime" or "openvino".
        checkpoint: "best" / "last" (run folders).
        device: "cpu" / "cuda"; default cuda when available.
        batch_size: windows per forward pass the prediction will use (kept for callers; the rule needs none).
        amp: the precision a PyTorch network will predict in (see
            :func:`medzoo.inference.predictor.inference_amp_dtype`); "auto" picks PyTorch on a CPU with
            native bf16. Default "none": fp32.

    Returns:
        ``(model, plan)``.
    """
    del batch_size  # the choice needs no timing
    model_path = Path(model_path)
    if device is None:
        from medzoo import runtime

        device = runtime.resolve_device(None)
    chosen = resolve_backend(backend, model_path, device, amp)
    if chosen == "torch":
        return _torch_backend(model_path, checkpoint, device)
    if chosen == "openvino" and not _installed("openvino"):
        raise ConfigError("the openvino backend needs the openvino package (pip install openvino)")
    runtime = {"openvino": "OpenVINO", "onnxruntime": "ONNX Runtime"}[chosen]
    if model_path.is_file():
        if model_path.suffix.lower() != ".onnx":
            raise ConfigError(f"{model_path}: give a run folder or an .onnx export")
        export, plan = model_path, _export_plan(model_path)
    elif chosen == "onnxruntime" and (model_path / "model.onnx").is_file():
        export = model_path / "model.onnx"  # made by `medzoo export`
        plan = Plan.from_dict(read_card(export)["plan"])
    else:
        export = cached_onnx_export(model_path, checkpoint)
        if export is None:
            if backend != "auto":
                raise ConfigError(f"{model_path}: the network could not be exported to ONNX for {runtime}")
            return _torch_backend(model_path, checkpoint, device)
        plan = Plan.load(model_path / "plan.json")
    if chosen == "openvino":
        loaded = _openvino_backend(export, plan, strict=backend != "auto")
        if loaded is not None:
            return loaded
        if model_path.is_dir():
            return _torch_backend(model_path, checkpoint, device)
    return _onnx_backend(export, plan, device)


def _export_plan(export: Path) -> Plan:
    """The plan of an ``.onnx`` file: from its card (``medzoo export``), else from a cached export's metadata."""
    checks = None if card_path(export).is_file() else export_checks(export)
    if checks is not None and isinstance(checks.get("plan"), dict):
        return Plan.from_dict(checks["plan"])
    return Plan.from_dict(read_card(export)["plan"])


def _torch_backend(model_path: Path, checkpoint: str, device: str | torch.device) -> tuple[Any, Plan]:
    if model_path.is_file():
        raise ConfigError(
            f"{model_path}: the torch backend takes a run folder; use --backend onnxruntime for an export"
        )
    from medzoo.engine.checkpoint import load_model_from_run

    return load_model_from_run(model_path, which=checkpoint, device=device)


def _cpu_threads(device: str | torch.device) -> int | None:
    return torch.get_num_threads() if torch.device(device).type == "cpu" else None


def _onnx_backend(export: Path, plan: Plan, device: str | torch.device) -> tuple[OnnxModel, Plan]:
    return OnnxModel(export, device=device, card=_size_rule(plan), threads=_cpu_threads(device)), plan


def _openvino_backend(export: Path, plan: Plan, strict: bool) -> tuple[OpenVinoModel, Plan] | None:
    """OpenVINO on the export, if it passed its check: the verdict stored in a cached export, else (an export
    from ``medzoo export``) a check against ONNX Runtime in this process. Returns None when it cannot
    compile or fails the check, unless ``strict`` (then it raises)."""
    checks = export_checks(export)
    verdict = checks.get("openvino") if checks else None
    try:
        if verdict is None:
            verdict = _check_openvino(export, plan, OnnxModel(export, threads=_cpu_threads("cpu")))
        if not verdict.get("ok"):
            detail = verdict.get("reason") or f"by {verdict.get('max_abs_diff')} (allowed {verdict.get('allowed')})"
            raise CheckpointError(f"{export}: OpenVINO differs from the reference {detail}")
        model = OpenVinoModel(export, card=_size_rule(plan), threads=_cpu_threads("cpu"))
    except (CheckpointError, ImportError, RuntimeError, ValueError, OSError) as err:
        if strict:
            raise
        log.warning("%s; predicting with the next runtime", err)
        return None
    return model, plan
