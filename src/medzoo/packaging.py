"""A trained model as one file: ``model.medzoo`` (pack, unpack, open for prediction).

A ``.medzoo`` file is a zip archive of a run's prediction essentials::

    medzoo.json         format marker, what was packed, and the SHA-256 and size of every other entry
    model.safetensors   the network's weights (no pickle: nothing in the file is executed on load)
    plan.json           model name and arguments, preprocessing, patch size, labels
    labels.json         class index -> name
    config.json         the training configuration (when the run has one)
    metrics.csv         the training curve (when the run has one)
    versions.json       Python, medzoo, torch, numpy, ... that packed it
    README.md           the model card, for people
    training_state.pt   only with ``with_optimizer``: optimizer, schedule, RNG states and counters
                        (``weights_only`` torch file), plus splits.json, so an unpacked run can resume

Caches (exports, race verdicts, preprocessed data) are never packed. Reading a file checks, before anything
is written, that it is a zip with a known format marker, that no entry is a link or would land outside the
target folder, and that every entry's checksum matches; any failure is one
:class:`~medzoo.errors.CheckpointError` naming the file. :func:`open_model` turns a ``.medzoo`` file into a
run folder extracted once into a private cache (keyed by the file's hash), so prediction, ensembles and
``medzoo info`` take packed models wherever they take run folders.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import platform
import shutil
import stat
import tempfile
import time
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from medzoo.errors import CheckpointError
from medzoo.planning.plan import Plan
from medzoo.utils import atomic_write, atomic_write_text, current_umask, read_json_object

log = logging.getLogger(__name__)

__all__ = [
    "ENTRY_FILE", "FORMAT", "FORMAT_VERSION", "SUFFIX", "clean_model_cache", "environment_versions", "is_packed",
    "model_cache_dir", "open_model", "pack_model", "read_manifest", "read_metrics_csv", "unpack_model",
]

FORMAT = "medzoo-model"
FORMAT_VERSION = 1
SUFFIX = ".medzoo"
MANIFEST = "medzoo.json"
WEIGHTS = "model.safetensors"
TRAINING_STATE = "training_state.pt"
_OPTIONAL_FILES = ("config.json", "metrics.csv")
_RESUME_FILES = ("splits.json",)
_CHUNK = 1 << 20
#: In each folder of the model cache: the files unpacked (name -> size) and the .medzoo files it came from.
ENTRY_FILE = ".medzoo_entry.json"
_STAGING_PREFIX = ".unpacking."
_DISCARD_PREFIX = ".discarded."
_STALE_SECONDS = 3600.0  # a staging or discarded folder this old belongs to no process still running


def pack_model(
    run_dir: str | Path, out: str | Path, *, checkpoint: str = "best", with_optimizer: bool = False
) -> Path:
    """Pack a run folder into one ``.medzoo`` file (written atomically).

    Args:
        run_dir: a training run folder (``plan.json`` + checkpoints).
        out: the file to write (``.medzoo`` is the usual suffix).
        checkpoint: "best" (default; falls back to "last"), "last" or a checkpoint file of the run.
        with_optimizer: also pack the optimizer, schedule and RNG states and the splits, so the unpacked
            folder can resume training.

    Returns:
        The path written.

    Raises:
        CheckpointError: the run folder, its plan or its checkpoint is missing or unreadable.
    """
    from safetensors.torch import save as save_safetensors

    from medzoo.engine.checkpoint import checkpoint_path, clean_state_dict, load_checkpoint

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: run folder not found")
    plan = Plan.load(run_dir / "plan.json")
    ckpt_file = checkpoint_path(run_dir, checkpoint)
    ckpt = load_checkpoint(ckpt_file)
    # safetensors refuses tensors that share memory, so each one gets its own contiguous copy
    weights = {k: v.detach().cpu().contiguous().clone() for k, v in clean_state_dict(ckpt["model"]).items()}
    entries: dict[str, bytes] = {
        WEIGHTS: save_safetensors(weights, metadata={"model": plan.model, "format": FORMAT}),
        "plan.json": (run_dir / "plan.json").read_bytes(),
        "labels.json": json.dumps({str(k): v for k, v in plan.labels.items()}, indent=2).encode(),
        "versions.json": json.dumps(environment_versions(), indent=2).encode(),
    }
    names = _OPTIONAL_FILES + (_RESUME_FILES if with_optimizer else ())
    entries.update({name: (run_dir / name).read_bytes() for name in names if (run_dir / name).is_file()})
    training = {k: ckpt[k] for k in ("epoch", "step", "elapsed", "best_metric") if k in ckpt}
    if with_optimizer:
        state = {k: v for k, v in ckpt.items() if k != "model"}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        entries[TRAINING_STATE] = buffer.getvalue()
    entries["README.md"] = model_card(plan, training, run_dir).encode()
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": plan.model,
        "checkpoint": _checkpoint_role(ckpt_file),
        "training": training,
        "with_optimizer": bool(with_optimizer),
        "split_sizes": _split_sizes(run_dir / "splits.json"),
        "files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                  for name, data in entries.items()},
    }

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(MANIFEST, json.dumps(manifest, indent=2))
            for name, data in entries.items():
                # weights barely compress; storing them keeps packing and opening fast
                zf.writestr(name, data, compress_type=zipfile.ZIP_STORED if name == WEIGHTS else None)

    return atomic_write(out, write)


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The checked manifest of a ``.medzoo`` file (format, packed checkpoint, checksums).

    Raises:
        CheckpointError: not a zip, no or an unknown format marker, a newer format version, an entry that
            is a link or would escape the folder it is unpacked into, or entries missing from the manifest.
    """
    path = Path(path)
    with _open_zip(path) as zf:
        return _check_archive(path, zf)


def unpack_model(path: str | Path, out_dir: str | Path) -> Path:
    """Unpack a ``.medzoo`` file into a run folder that ``predict``, ``evaluate`` and ``info`` take.

    The folder gets ``plan.json``, the weights as ``checkpoint_best.pt`` (or ``checkpoint_last.pt``, as
    packed; with the training state when it was packed), and the card, labels, config and versions files.
    Every entry is checked before anything is written, and the folder appears whole or not at all.

    Args:
        path: the ``.medzoo`` file.
        out_dir: the folder to create (it must not exist, or be empty).

    Returns:
        ``out_dir``.

    Raises:
        CheckpointError: the file fails a check (see :func:`read_manifest`, plus checksums), or ``out_dir``
            is not empty.
    """
    path, out_dir = Path(path), Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CheckpointError(f"{out_dir}: already exists and is not an empty folder; pick another folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        _extract(path, staging)
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp made it private; the run folder is the user's
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def open_model(model: str | Path) -> Path:
    """A run folder for ``model``: a ``.medzoo`` file is unpacked once into a private cache; anything else
    (a run folder, an ``.onnx`` export) is returned unchanged.

    The cache is ``$MEDZOO_MODEL_CACHE``, else ``$XDG_CACHE_HOME/medzoo/models``, else
    ``~/.cache/medzoo/models``, one folder per file content (SHA-256), so a changed file is unpacked anew and
    processes that open the same file at once (e.g. ranks under torchrun) share one folder. A cached folder
    with a file missing or of another size than unpacked is discarded and unpacked again (one warning). Each
    new unpack cleans the cache: a folder whose ``.medzoo`` files are all gone or changed since they were
    opened is removed, as is what an unpack killed midway left behind.

    Raises:
        CheckpointError: the ``.medzoo`` file fails a check (see :func:`unpack_model`).
    """
    model = Path(model)
    if not is_packed(model):
        return model
    if not model.is_file():
        raise CheckpointError(f"{model}: packed model not found")
    cache = model_cache_dir()
    target = cache / _file_sha256(model)[:32]
    if target.is_dir():
        damage = _entry_damage(target)
        if damage is None:
            _remember_source(target, model)
            return target
        level = logging.INFO if damage == _OLD_ENTRY else logging.WARNING
        log.log(level, "%s: its unpacked copy %s %s; unpacking it again", model, target, damage)
        _discard(target)
    _unpack_to_cache(model, target)
    _remember_source(target, model)
    clean_model_cache(cache)
    return target


def _unpack_to_cache(model: Path, target: Path) -> None:
    """Unpack ``model`` into the cache folder ``target``, which appears whole (with its :data:`ENTRY_FILE`) or
    not at all; when another process got there first, its folder is kept."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=target.parent))
    try:
        _extract(model, staging)
        files = {str(p.relative_to(staging)): p.stat().st_size for p in staging.rglob("*") if p.is_file()}
        # the source is recorded before the folder appears, so no clean-up ever sees it without one
        sources = {str(model.resolve()): _source_stat(model)}
        (staging / ENTRY_FILE).write_text(json.dumps({"files": files, "sources": sources}, indent=2))
        try:
            os.replace(staging, target)
        except OSError:  # another process unpacked the same file first
            if _entry_damage(target) is not None:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def clean_model_cache(cache: str | Path | None = None) -> list[Path]:
    """Remove what :func:`open_model` no longer needs from its cache (default :func:`model_cache_dir`): the
    unpacked folders none of whose ``.medzoo`` files still exists unchanged (same size, modification time
    and inode as when it was last opened), and folders an unpack or a clean-up killed midway left behind
    (after an hour, so as not to race one in progress). Nothing else in the folder is touched.

    Returns:
        The folders removed.
    """
    cache = Path(cache) if cache is not None else model_cache_dir()
    removed = []
    for path in sorted(cache.iterdir()) if cache.is_dir() else []:
        if not path.is_dir() or path.is_symlink():
            continue
        if path.name.startswith((_STAGING_PREFIX, _DISCARD_PREFIX)):
            try:
                stale = time.time() - path.stat().st_mtime > _STALE_SECONDS
            except OSError:  # its process finished with it meanwhile
                continue
        elif len(path.name) == 32 and all(c in "0123456789abcdef" for c in path.name) and (path / MANIFEST).is_file():
            sources = read_json_object(path / ENTRY_FILE).get("sources") or {}
            stale = not any(_source_stat(Path(p)) == recorded for p, recorded in sources.items())
        else:
            continue  # not ours
        if stale:
            _discard(path)
            removed.append(path)
    if removed:
        log.info("model cache %s: removed %d unpacked model(s) whose .medzoo file is gone or changed", cache,
                 len(removed))
    return removed


_OLD_ENTRY = f"has no {ENTRY_FILE} (unpacked by an earlier medzoo)"


def _entry_damage(entry: Path) -> str | None:
    """What is wrong with an unpacked cache folder (None: every file it was unpacked with is there, whole)."""
    if not (entry / ENTRY_FILE).is_file():
        return _OLD_ENTRY
    files = read_json_object(entry / ENTRY_FILE).get("files")
    if not isinstance(files, dict) or not files:
        return f"has an unreadable {ENTRY_FILE}"
    for name, size in files.items():
        try:
            actual = (entry / name).stat().st_size
        except OSError:
            return f"lacks {name}"
        if actual != size:
            return f"has {name} of {actual} bytes instead of {size}"
    return None


def _source_stat(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _remember_source(entry: Path, model: Path) -> None:
    """Record ``model`` (path and stat) as a file ``entry`` was unpacked from: :func:`clean_model_cache` keeps
    the folder while one of these files is unchanged."""
    stamp = read_json_object(entry / ENTRY_FILE)
    sources = stamp.get("sources") or {}
    path, now = str(model.resolve()), _source_stat(model)
    if sources.get(path) == now:
        return
    try:
        atomic_write_text(entry / ENTRY_FILE, json.dumps({**stamp, "sources": {**sources, path: now}}, indent=2))
    except OSError as err:  # a read-only cache still predicts; only the clean-up loses track of this file
        log.debug("could not record %s in %s: %s", model, entry, err)


def _discard(path: Path) -> None:
    """Remove a cache folder: renamed aside first, so no process ever sees it half deleted."""
    aside = path
    if not path.name.startswith((_STAGING_PREFIX, _DISCARD_PREFIX)):
        aside = path.with_name(f"{_DISCARD_PREFIX}{path.name}.{os.getpid()}.{time.monotonic_ns()}")
        try:
            os.replace(path, aside)
        except OSError:  # another process discarded it first
            return
    shutil.rmtree(aside, ignore_errors=True)


def is_packed(path: str | Path) -> bool:
    """Whether ``path`` names a packed model: a ``.medzoo`` file, or a zip holding a medzoo manifest."""
    path = Path(path)
    if path.suffix.lower() == SUFFIX:
        return True
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            return MANIFEST in zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def model_cache_dir() -> Path:
    """Where :func:`open_model` unpacks ``.medzoo`` files: :func:`medzoo.runtime.model_cache_dir`."""
    from medzoo import runtime

    return runtime.model_cache_dir()


def environment_versions() -> dict[str, str]:
    """Versions of Python, the platform and the packages that make or run a model."""
    from importlib.metadata import PackageNotFoundError, version

    import medzoo

    out = {"python": platform.python_version(), "platform": platform.platform(), "medzoo": medzoo.__version__}
    for name in ("torch", "numpy", "safetensors", "onnx", "onnxruntime", "openvino", "SimpleITK", "nibabel"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def model_card(plan: Plan, training: dict[str, Any], run_dir: Path) -> str:
    """The model card (Markdown) of a packed run: what it segments, from what, how it was trained."""
    labels = ", ".join(f"{k} {v}" for k, v in sorted(plan.labels.items()))
    patch = "x".join(map(str, plan.patch_size))
    spacing = "native" if plan.target_spacing is None else " x ".join(f"{s:g}" for s in plan.target_spacing) + " mm"
    config = read_json_object(run_dir / "config.json")
    dice = _final_dice(run_dir / "metrics.csv")
    lines = [
        f"# medzoo model: {plan.model} ({plan.spatial_dims}D)", "",
        f"- inputs: {', '.join(plan.modalities)} ({plan.in_channels} channel(s))",
        f"- labels: {labels}",
        f"- patch {patch}, spacing {spacing}, normalisation {', '.join(plan.normalization)}",
    ]
    if config.get("data"):
        lines.append(f"- trained on: {Path(str(config['data'])).name} ({config.get('layout') or 'auto'} layout)")
    if training:
        lines.append("- training: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                for k, v in training.items()))
    if dice:
        lines.append("- last validation Dice: " + ", ".join(f"{k} {v:.3f}" for k, v in dice.items()))
    lines += ["", "Use: `medzoo predict --model THIS_FILE --input scans/ --output predictions/`;",
              "`medzoo info THIS_FILE` shows everything; `medzoo unpack THIS_FILE FOLDER` gives a run folder.", ""]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- reading
def _open_zip(path: Path) -> zipfile.ZipFile:
    if not path.is_file():
        raise CheckpointError(f"{path}: packed model not found")
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(f"{path}: not a medzoo model file (not a zip archive: {err})") from None


def _check_archive(path: Path, zf: zipfile.ZipFile) -> dict[str, Any]:
    """The manifest, after checking every entry's name and the format marker (see :func:`read_manifest`)."""
    for info in zf.infolist():
        _check_entry_name(path, info)
    try:
        manifest = json.loads(zf.read(MANIFEST))
    except KeyError:
        raise CheckpointError(f"{path}: unknown format (no {MANIFEST}); not a file made by `medzoo pack`") from None
    except (ValueError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path}: unreadable {MANIFEST} ({err}); the file is damaged") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise CheckpointError(f"{path}: unknown format {found!r} (expected {FORMAT!r}); not a file made by `medzoo pack`")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: unknown format version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format version {version} is newer than this medzoo reads ({FORMAT_VERSION}); upgrade medzoo"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or WEIGHTS not in files or "plan.json" not in files:
        raise CheckpointError(f"{path}: the manifest lists no weights or plan; the file is damaged")
    names = {info.filename for info in zf.infolist() if not info.is_dir()} - {MANIFEST}
    if names != set(files):
        odd = sorted(names.symmetric_difference(files))[:3]
        raise CheckpointError(f"{path}: entries {odd} do not match its manifest; the file is damaged or was modified")
    return manifest


def _check_entry_name(path: Path, info: zipfile.ZipInfo) -> None:
    """Refuse links, absolute names, drive letters, backslashes and ``..``: anything that could land outside
    the folder being unpacked into."""
    name = info.filename
    parts = PurePosixPath(name).parts
    mode = info.external_attr >> 16
    if (
        not name or name.startswith("/") or "\\" in name or ":" in name or ".." in parts
        or stat.S_ISLNK(mode) or "\0" in name
    ):
        raise CheckpointError(
            f"{path}: refused: entry {name!r} would land outside the folder it is unpacked into "
            "(or is a link); do not use this file"
        )


def _extract(path: Path, target: Path) -> None:
    """Check ``path`` and write its run folder into the (empty) folder ``target``."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    from medzoo.engine.checkpoint import save_checkpoint

    with _open_zip(path) as zf:
        manifest = _check_archive(path, zf)
        data = {name: _read_checked(path, zf, name, meta) for name, meta in manifest["files"].items()}
    try:
        weights = load_safetensors(data.pop(WEIGHTS))
    except (SafetensorError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable weights ({err})") from None
    state: dict[str, Any] = {}
    if TRAINING_STATE in data:
        state = _load_state(path, data.pop(TRAINING_STATE))
    try:
        plan = Plan.from_dict(json.loads(data["plan.json"]))
    except (ValueError, TypeError, CheckpointError) as err:
        raise CheckpointError(f"{path}: unreadable plan.json ({err})") from None
    state.update(manifest.get("training", {}), model=weights, plan=plan.to_dict(), model_name=plan.model)
    root = target.resolve()
    for name, content in data.items():
        dest = (target / name).resolve()
        if root not in dest.parents:  # the names were checked already; this guards the check itself
            raise CheckpointError(f"{path}: refused: entry {name!r} would land outside {target}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(content)
    role = manifest.get("checkpoint") if manifest.get("checkpoint") in ("best", "last") else "best"
    save_checkpoint(target / f"checkpoint_{role}.pt", state)
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2))


def _read_checked(path: Path, zf: zipfile.ZipFile, name: str, meta: Any) -> bytes:
    """One entry's bytes, read at most up to its declared size, with its SHA-256 checked."""
    if not isinstance(meta, dict) or not isinstance(meta.get("size"), int) or not isinstance(meta.get("sha256"), str):
        raise CheckpointError(f"{path}: the manifest entry of {name} is malformed; the file is damaged")
    digest, chunks, size = hashlib.sha256(), [], 0
    try:
        with zf.open(name) as fh:
            while chunk := fh.read(min(_CHUNK, meta["size"] + 1 - size)):
                size += len(chunk)
                if size > meta["size"]:
                    break
                digest.update(chunk)
                chunks.append(chunk)
    except (zipfile.BadZipFile, OSError, EOFError) as err:  # CRC errors, truncation, bad compression
        raise CheckpointError(f"{path}: entry {name} is damaged ({err}); get the file again") from None
    if size != meta["size"] or digest.hexdigest() != meta["sha256"]:
        raise CheckpointError(
            f"{path}: checksum of {name} does not match its manifest; the file is damaged or was modified, "
            "get it again"
        )
    return b"".join(chunks)


def _load_state(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - the unpickler fails in many ways on foreign content
        raise CheckpointError(f"{path}: refused {TRAINING_STATE}: not a plain weights-only file ({err})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: {TRAINING_STATE} is not a dict")
    return state


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _split_sizes(splits_json: Path) -> dict[str, int]:
    """Training and validation case counts of the run's fold (the case names stay out of the file)."""
    splits = read_json_object(splits_json)
    folds = splits.get("folds") or []
    try:
        fold = folds[int(splits.get("fold", 0) or 0)]
        return {"training_cases": len(fold["train"]), "validation_cases": len(fold["val"])}
    except (IndexError, KeyError, TypeError, ValueError):
        return {}


def _checkpoint_role(ckpt_file: Path) -> str:
    return "last" if ckpt_file.name == "checkpoint_last.pt" else "best"


def _final_dice(metrics_csv: Path) -> dict[str, float]:
    """Per-class Dice of the last validated epoch in ``metrics.csv`` (empty when there is none)."""
    rows = [r for r in read_metrics_csv(metrics_csv) if r.get("val_dice_mean") is not None]
    if not rows:
        return {}
    return {k[len("val_dice_"):]: v for k, v in rows[-1].items() if k.startswith("val_dice_") and v is not None}


def read_metrics_csv(path: str | Path) -> list[dict[str, float | None]]:
    """The rows of a run's ``metrics.csv`` as numbers (None for empty cells); empty when it is missing."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError:
        return []
    out = []
    for row in rows:
        parsed: dict[str, float | None] = {}
        for key, value in row.items():
            try:
                parsed[key] = float(value) if value not in (None, "") else None
            except ValueError:
                parsed[key] = None
        out.append(parsed)
    return out
