"""Prediction backends: the PyTorch network of a run folder, or its ONNX export under OpenVINO or ONNX Runtime.

Each gives a callable taking a torch tensor (N, C, *P) and returning (N, K, *P) plus the run's
:class:`~medzoo.planning.plan.Plan`, so :func:`~medzoo.inference.sliding_window.sliding_window` and the
predictor use them alike.

The default, ``"auto"``, picks on the CPU the faster of OpenVINO and PyTorch for a run folder (timed once per
checkpoint, batch size, thread count and CPU model on one batch of windows, :mod:`medzoo.inference.race`;
recorded beside the export as ``<name>.race.json``), PyTorch when OpenVINO is not installed, OpenVINO for an
``.onnx`` file (which PyTorch cannot run; ONNX Runtime without OpenVINO); on a GPU, PyTorch. On the 2-core
development CPU (AMX), predicting a 120x110x100 scan with 64^3 windows (``python -m benchmarks.backends``:
unet3d, segresnet, resnetmed3d_10, vnet_light, deeplabv3plus_resnet18), OpenVINO was 0.98-1.32x as fast as
PyTorch (which runs the networks whose card says so in channels-last) and ONNX Runtime 1.3-2.2x slower than
PyTorch; with test-time mirroring on 36 hippocampus cases OpenVINO took 28 s, PyTorch 35 s and ONNX Runtime
77 s. So ONNX Runtime is not a fallback for run folders: it checks the export and OpenVINO, and runs ``.onnx``
files or when asked for. PyTorch's prediction path has since become faster: on the 96^3 windows of ``python
-m benchmarks.sliding_window`` it beats OpenVINO 1.2x, while OpenVINO stays level or ahead on
hippocampus-sized windows and on the contiguous-layout networks; hence the race rather than a fixed choice.

The run's network is exported once per checkpoint and cached in ``RUN/.medzoo_cache/``. The export is
checked against PyTorch (max |diff| 1e-4 under ONNX Runtime), and OpenVINO once against ONNX Runtime (max
|diff| 1e-3 of the logits' range, recorded beside the export). A network that cannot be exported, or fails a
check, is predicted with PyTorch; a run folder that cannot be written exports to a temporary folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
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
    "BACKENDS", "OnnxModel", "OpenVinoModel", "cached_onnx_export", "load_backend", "race_key", "read_card",
    "resolve_backend",
]

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
OPENVINO_TOLERANCE = 1e-3  # OpenVINO vs ONNX Runtime: max |diff| relative to max(1, max |logit|)
CACHE_DIR = ".medzoo_cache"
_EXPORT_STYLE = "opset17-fixed-spatial"  # part of the cache key: a change in how we export makes a new file


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


def _read_record(path: Path) -> dict[str, Any] | None:
    """A JSON record medzoo keeps beside an export (a check, a race), or None when there is none. A damaged
    one is deleted with one warning and None is returned: it is derived, so it is simply made again."""
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
    except OSError:  # none, or unreadable: nothing to go by
        return None
    except ValueError as err:  # truncated JSON, garbage bytes
        record, problem = None, f"{type(err).__name__}: {err}"
    else:
        problem = None if isinstance(record, dict) else f"a JSON {type(record).__name__}, not an object"
    if problem is None:
        return record
    log.warning("%s: discarding a damaged record (%s); it will be made again", path, problem)
    try:
        path.unlink()
    except OSError:
        pass
    return None


def _size_rule(plan: Plan) -> Any:
    try:
        from medzoo.models.registry import get_card

        return get_card(plan.model)
    except Exception:  # noqa: BLE001 - an unknown model just means "no size rule"
        return None


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(name) is not None for name in modules)


def resolve_backend(backend: str, model_path: str | Path, device: str | torch.device) -> str:
    """The backend ``"auto"`` stands for: on the CPU, OpenVINO (when it and onnx, for the export, are
    installed), else PyTorch; on a GPU, PyTorch; an ``.onnx`` file without OpenVINO: ONNX Runtime. Other
    names are returned unchanged (after checking them)."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    on_cpu = torch.device(device).type == "cpu"
    if on_cpu and _installed("onnx", "openvino"):
        return "openvino"
    if Path(model_path).is_file():
        return "onnxruntime"
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


def cached_onnx_export(run_dir: str | Path, checkpoint: str = "best") -> Path | None:
    """The ONNX export of a run's checkpoint, made on first use and cached in ``RUN/.medzoo_cache/``.

    The export is checked against PyTorch (see :func:`medzoo.export.export_network`); its spatial axes are
    fixed to the plan's patch size (about 10 % faster under ONNX Runtime than size-generic axes; the sliding
    window only feeds patch-sized windows), or size-generic for the graphs that only export that way. A new
    or rewritten checkpoint gets a new export. Processes that start predicting with one run at once export it
    once (the others wait for it). A cached export is checked against the SHA-256 its card records before
    use: a damaged one is discarded with one warning and made again. When the run folder cannot be written,
    the export goes to a temporary folder for this process only.

    Args:
        run_dir: the run folder.
        checkpoint: "best", "last" or a checkpoint file name/path.

    Returns:
        The ``.onnx`` path (its card beside it), or None when the network cannot be exported faithfully
        (remembered in the cache, so the next call does not try again).
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
    try:
        cache.mkdir(exist_ok=True)
        probe = cache / f".write_test_{key}"
        probe.touch()
        probe.unlink()
    except OSError:
        path = Path(tempfile.mkdtemp(prefix="medzoo_onnx_")) / "model.onnx"
        log.info("%s is not writable; exporting to %s for this run only", run_dir, path.parent)
        return _export(run_dir, ckpt, path, failed=None)
    with locked(cache):  # one process exports; the others wait here, then take its export
        problem = _export_problem(path)
        if problem is None:
            return path
        if _export_failed(failed, ckpt):
            return None
        if path.exists() or card_path(path).exists():
            log.warning("%s; discarding the cached export and exporting it again", problem)
        for stale in (path, card_path(path), *_verdict_files(path)):
            stale.unlink(missing_ok=True)
        for leftover in cache.glob(".export-*"):  # from a process killed while exporting
            shutil.rmtree(leftover, ignore_errors=True)
        return _export(run_dir, ckpt, path, failed)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _export_problem(path: Path) -> str | None:
    """Why the cached export ``path`` cannot be used, or None when it and its card are whole."""
    if not path.is_file() and not card_path(path).is_file():
        return "not exported yet"
    if not path.is_file():
        return f"{path}: missing beside its card"
    try:
        card = read_card(path)
    except CheckpointError as err:
        return str(err)
    if card.get("onnx_sha256") != _sha256(path):
        return f"{path}: does not match the SHA-256 in its card {card_path(path).name}"
    return None


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


def _verdict_files(export: Path) -> tuple[Path, Path]:
    """The records kept beside an export: OpenVINO's check and the race."""
    return export.with_suffix(".openvino.json"), export.with_suffix(".race.json")


def _export(run_dir: Path, ckpt: Path, path: Path, failed: Path | None) -> Path | None:
    """Export into a private folder beside ``path``, record the export's SHA-256 in its card, then move both
    into place (export first: a card is only ever found beside the export it describes)."""
    from medzoo.export import export_model
    from medzoo.utils import atomic_write_text

    log.info("exporting %s to ONNX (once per checkpoint)", ckpt)
    work = Path(tempfile.mkdtemp(prefix=".export-", dir=path.parent))
    out = work / path.name
    try:
        try:
            export_model(run_dir, "onnx", out=out, checkpoint=str(ckpt), dynamic_spatial=False)
        except Exception as err:  # noqa: BLE001 - some graphs only export with size-generic axes
            log.info("%s: fixed-size ONNX export failed (%s); trying size-generic axes", ckpt, err)
            export_model(run_dir, "onnx", out=out, checkpoint=str(ckpt), dynamic_spatial=True)
        card = json.loads(card_path(out).read_text())
        card["onnx_sha256"] = _sha256(out)
        atomic_write_text(card_path(out), json.dumps(card, indent=2))
        os.replace(out, path)
        os.replace(card_path(out), card_path(path))
    except Exception as err:  # noqa: BLE001 - any export failure means: predict with PyTorch instead
        log.warning("%s: ONNX export failed (%s: %s); predicting with PyTorch", ckpt, type(err).__name__, err)
        if failed is not None and not isinstance(err, OSError):  # a full disk is not the network's fault
            try:
                atomic_write_text(failed, f"{type(err).__name__}: {err}\n")
            except OSError:
                pass
        return None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


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
        backend: "auto" (on the CPU, the faster of OpenVINO, through an export cached per checkpoint, and
            PyTorch, timed once on one window batch and recorded beside the export, see
            :mod:`medzoo.inference.race`; PyTorch without OpenVINO, see :func:`resolve_backend`, or when
            the network does not export or a check fails; an ``.onnx`` file runs under OpenVINO, or ONNX
            Runtime when its OpenVINO check fails), "torch", "onnxruntime" or "openvino".
        checkpoint: "best" / "last" (run folders).
        device: "cpu" / "cuda"; default cuda when available.
        batch_size: windows per forward pass the prediction will use (the race times this batch).
        amp: the precision a PyTorch network will predict in (see
            :func:`medzoo.inference.predictor.inference_amp_dtype`; :func:`~medzoo.inference.predictor.predict`
            passes its own): the race times PyTorch under that autocast ("auto": bf16 on a CPU with native
            bf16), and keeps its verdict apart from fp32 ones. Default "none": fp32.

    Returns:
        ``(model, plan)``.
    """
    model_path = Path(model_path)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = resolve_backend(backend, model_path, device)
    if chosen == "torch":
        return _torch_backend(model_path, checkpoint, device)
    if chosen == "openvino" and not _installed("openvino"):
        raise ConfigError("the openvino backend needs the openvino package (pip install openvino)")
    runtime = {"openvino": "OpenVINO", "onnxruntime": "ONNX Runtime"}[chosen]
    if model_path.is_file():
        if model_path.suffix.lower() != ".onnx":
            raise ConfigError(f"{model_path}: give a run folder or an .onnx export")
        export = model_path
    elif chosen == "onnxruntime" and backend != "auto" and (model_path / "model.onnx").is_file():
        export = model_path / "model.onnx"  # made by `medzoo export`
    else:
        export = cached_onnx_export(model_path, checkpoint)
        if export is None:
            if backend != "auto":
                raise ConfigError(f"{model_path}: the network could not be exported to ONNX for {runtime}")
            return _torch_backend(model_path, checkpoint, device)
    if chosen == "openvino":
        race = (_RaceRecord(export, batch_size, _torch_race_dtype(amp))
                if backend == "auto" and model_path.is_dir() else None)  # fmt: skip
        winner = None if race is None else race.winner()
        if winner == "torch":
            return _torch_backend(model_path, checkpoint, device)
        loaded = _openvino_backend(export, strict=backend != "auto")
        if loaded is not None:
            if race is not None and winner is None:
                return race.run(loaded, lambda: _torch_backend(model_path, checkpoint, device))
            return loaded
        if model_path.is_dir():  # auto: PyTorch is faster than ONNX Runtime here (see the module docstring)
            return _torch_backend(model_path, checkpoint, device)
    return _onnx_backend(export, device)


def _cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``), for keys of timings."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def race_key(batch_size: int, torch_dtype: torch.dtype | None = None) -> str:
    """The key of a race in ``<name>.race.json``: batch size, thread count, a short hash of the CPU model (a
    run folder copied to another machine races again there) and ``_bf16`` when PyTorch ran under bf16
    autocast."""
    cpu = hashlib.sha1(_cpu_model().encode()).hexdigest()[:8]
    precision = "_bf16" if torch_dtype == torch.bfloat16 else ""
    return f"batch{int(batch_size)}_threads{torch.get_num_threads()}_cpu{cpu}{precision}"


def _torch_race_dtype(amp: str) -> torch.dtype | None:
    """The autocast dtype PyTorch predicts in on the CPU for ``amp`` (None: fp32; fp16 is fp32 there, and the
    predictor itself warns about it)."""
    from medzoo import runtime

    return runtime.autocast_dtype("none" if amp == "fp16" else amp, "cpu", "predicting")


class _RaceRecord:
    """The OpenVINO-against-PyTorch race of one export, per batch size, thread count and CPU model, kept
    beside the export as ``<name>.race.json`` (a run folder that cannot be written races again in each
    process)."""

    def __init__(self, export: Path, batch_size: int, torch_dtype: torch.dtype | None = None) -> None:
        self.path = export.with_suffix(".race.json")
        self.batch_size = int(batch_size)
        self.torch_dtype = torch_dtype
        self.key = race_key(self.batch_size, torch_dtype)

    def _read(self) -> dict[str, Any]:
        races = _read_record(self.path)
        return {} if races is None else races

    def winner(self) -> str | None:
        """The recorded winner for this key ("openvino" / "torch"), else None."""
        winner = self._read().get(self.key, {})
        winner = winner.get("winner") if isinstance(winner, dict) else None
        return winner if winner in ("openvino", "torch") else None

    def run(self, openvino: tuple[OpenVinoModel, Plan], load_torch: Any) -> tuple[Any, Plan]:
        """Race the compiled export against the network ``load_torch()`` returns (as ``(model, plan)``),
        record the result and return the winner's ``(model, plan)``."""
        from medzoo import runtime
        from medzoo.inference.race import race_runtimes
        from medzoo.inference.sliding_window import network_window
        from medzoo.models.registry import prefers_channels_last
        from medzoo.utils import atomic_write_text

        runtime.tune_malloc()  # as predict() runs: without it PyTorch page-faults its activations back in every call

        ov_model, plan = openvino
        torch_model, _ = load_torch()
        torch_model.eval()
        layout = runtime.preferred_memory_format("auto", plan.spatial_dims, "cpu", prefers_channels_last(plan.model))
        if layout is not None:
            torch_model.to(memory_format=layout)
        window = network_window(ov_model, tuple(plan.patch_size))
        x = torch.randn((self.batch_size, plan.in_channels, *window), generator=torch.Generator().manual_seed(0))
        log.info("timing OpenVINO against PyTorch on one batch of windows (once per checkpoint)")
        result = race_runtimes(ov_model, torch_model, x, torch_dtype=self.torch_dtype)
        result.update(batch_size=self.batch_size, threads=torch.get_num_threads(), cpu=_cpu_model(),
                      torch_layout="channels_last" if layout is not None else "contiguous",
                      torch_precision="bf16" if self.torch_dtype == torch.bfloat16 else "fp32")  # fmt: skip
        races = self._read()
        races[self.key] = result
        try:
            atomic_write_text(self.path, json.dumps(races, indent=2))
        except OSError as err:
            log.info("cannot record the race in %s (%s)", self.path, err)
        return (torch_model, plan) if result["winner"] == "torch" else openvino


def _torch_backend(model_path: Path, checkpoint: str, device: str | torch.device) -> tuple[Any, Plan]:
    if model_path.is_file():
        raise ConfigError(
            f"{model_path}: the torch backend takes a run folder; use --backend onnxruntime for an export"
        )
    from medzoo.engine.checkpoint import load_model_from_run

    return load_model_from_run(model_path, which=checkpoint, device=device)


def _cpu_threads(device: str | torch.device) -> int | None:
    return torch.get_num_threads() if torch.device(device).type == "cpu" else None


def _onnx_backend(export: Path, device: str | torch.device) -> tuple[OnnxModel, Plan]:
    card = read_card(export)
    plan = Plan.from_dict(card["plan"])
    return OnnxModel(export, device=device, card=_size_rule(plan), threads=_cpu_threads(device)), plan


def _openvino_backend(export: Path, strict: bool) -> tuple[OpenVinoModel, Plan] | None:
    """OpenVINO on the export, checked once against ONNX Runtime (the result is kept beside the export as
    ``<name>.openvino.json``). Returns None when it cannot compile or fails the check, unless ``strict``
    (then it raises)."""
    from medzoo.utils import atomic_write_text

    card = read_card(export)
    plan = Plan.from_dict(card["plan"])
    record = export.with_suffix(".openvino.json")
    model = None
    try:
        # a stored verdict first: a network that failed the check is not compiled again on every call
        verdict = _read_record(record)
        if verdict is not None and not isinstance(verdict.get("ok"), bool):
            log.warning("%s: discarding a damaged record (no verdict); checking OpenVINO again", record)
            verdict = None
        if verdict is None or verdict.get("ok"):
            model = OpenVinoModel(export, card=_size_rule(plan), threads=_cpu_threads("cpu"))
        if verdict is None:
            verdict = _check_openvino(model, export, plan)
            try:
                atomic_write_text(record, json.dumps(verdict, indent=2))
            except OSError:
                pass
    except (CheckpointError, ImportError, RuntimeError, ValueError, OSError) as err:
        if strict:
            raise
        log.warning("%s: OpenVINO unavailable for this model (%s); using the next runtime", export, err)
        return None
    if not verdict.get("ok"):
        message = f"{export}: OpenVINO differs from ONNX Runtime by {verdict.get('max_abs_diff')} (> tolerance)"
        if strict:
            raise CheckpointError(message)
        log.warning("%s; using the next runtime", message)
        return None
    return model, plan


def _check_openvino(model: OpenVinoModel, export: Path, plan: Plan) -> dict[str, Any]:
    """Max |OpenVINO - ONNX Runtime| on two random patch-sized inputs, against ``OPENVINO_TOLERANCE``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn((2, plan.in_channels, *plan.patch_size), generator=g)
    want = OnnxModel(export, threads=_cpu_threads("cpu"))(x)
    got = model(x)
    diff = float((got - want).abs().max())
    allowed = OPENVINO_TOLERANCE * max(1.0, float(want.abs().max()))
    log.info("OpenVINO vs ONNX Runtime on %s: max |diff| %.2e (allowed %.2e)", export.name, diff, allowed)
    return {"ok": bool(diff <= allowed), "max_abs_diff": diff, "allowed": allowed}
