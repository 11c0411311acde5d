"""The preprocessed-case cache: memory-mappable ``.npy`` arrays plus JSON metadata per case.

Layout of ``cache_dir``::

    {case_id}_image.npy       float32 (C, *S)   preprocessed image
    {case_id}_label.npy       uint8 (*S)        class map (absent for unlabelled cases)
    {case_id}_locations.npz   class_<k> -> (N, ndim) int32 voxel coordinates (at most MAX_LOCATIONS each)
    {case_id}.json            meta: geometry (original shape/affine, crop box, ...), settings hash

A case is valid when its JSON exists and its ``hash`` equals the hash of the current preprocessing settings
(plan fields + the case files' sizes and mtimes), and its files are whole: each ``.npy`` header parses and
the file is exactly as long as the header says, the label has the image's shape, the ``.npz`` passes its
checksums. Every file is written atomically (temp + rename) and the JSON last, after removing a stale one
first, so an interrupted run leaves either a valid case or a case that is simply redone on the next run —
never a half-written array that passes for a valid one. A case damaged afterwards (truncated, overwritten)
is preprocessed again with one warning naming the file. Runs that share a cache fill it one at a time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medzoo.data.case import Case, DatasetInfo
from medzoo.errors import DataError
from medzoo.planning.plan import Plan
from medzoo.utils import atomic_write, atomic_write_text, locked

log = logging.getLogger(__name__)

CACHE_VERSION = 1
#: At most this many voxel coordinates are kept per class for foreground oversampling (as nnU-Net).
MAX_LOCATIONS = 10000


@dataclass
class CachedCase:
    """One preprocessed case, memory-mapped from the cache.

    Attributes:
        case_id: the case's id.
        image: np.memmap float32 (C, *S).
        label: np.memmap uint8 (*S), or None for unlabelled cases.
        meta: the JSON metadata (geometry of :class:`~medzoo.transforms.preprocess.PreprocessedCase`).
        class_locations: class index -> (N, ndim) int32 voxel coordinates of that class (background
            included), a random subset of at most :data:`MAX_LOCATIONS`.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    meta: dict
    class_locations: dict[int, np.ndarray] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape (*S)."""
        return tuple(self.image.shape[1:])

    def __reduce__(self):
        # memory-mapped cases travel to worker processes as (folder, id) and are re-mapped there
        filename = getattr(self.image, "filename", None)
        if filename:
            return (open_cached_case, (str(Path(filename).parent), self.case_id))
        return (CachedCase, (self.case_id, self.image, self.label, self.meta, self.class_locations))


def preprocessing_settings(plan: Plan, info: DatasetInfo | None = None) -> dict:
    """The plan (and dataset) fields that determine the cached arrays."""
    return {
        "version": CACHE_VERSION,
        "target_spacing": None if plan.target_spacing is None else list(plan.target_spacing),
        "crop_to_nonzero": bool(plan.crop_to_nonzero),
        "normalization": list(plan.normalization),
        "norm_stats": list(plan.norm_stats),
        "label_mapping": None
        if info is None or info.label_mapping is None
        else {str(k): v for k, v in sorted(info.label_mapping.items())},
        "num_classes": None if info is None else info.num_classes,
    }


def _file_stamp(path: Path) -> list:
    st = os.stat(path)
    return [str(path), st.st_size, st.st_mtime_ns]


def case_hash(case: Case, settings: dict) -> str:
    """Hash of the preprocessing settings plus the case files' paths, sizes and mtimes."""
    files = list(case.image_paths) + ([case.label_path] if case.label_path else [])
    try:
        stamps = [_file_stamp(Path(p)) for p in files]
    except FileNotFoundError as err:
        raise DataError(f"case {case.case_id}: file missing ({err.filename})") from err
    blob = json.dumps({"settings": settings, "files": stamps}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _paths(cache_dir: Path, case_id: str) -> dict[str, Path]:
    return {
        "image": cache_dir / f"{case_id}_image.npy",
        "label": cache_dir / f"{case_id}_label.npy",
        "locations": cache_dir / f"{case_id}_locations.npz",
        "meta": cache_dir / f"{case_id}.json",
    }


def class_locations(label: np.ndarray, num_classes: int, seed: int = 0) -> dict[int, np.ndarray]:
    """Up to :data:`MAX_LOCATIONS` random voxel coordinates per class present in ``label (*S)``.

    Returns:
        class -> (N, ndim) int32 coordinates (classes absent from the label are omitted).
    """
    rng = np.random.default_rng(seed)
    flat = label.reshape(-1)
    counts = np.bincount(flat, minlength=num_classes)
    order = np.argsort(flat, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    out = {}
    for k in range(len(counts)):
        n = int(counts[k])
        if n == 0:
            continue
        idx = order[starts[k] : starts[k + 1]]
        if n > MAX_LOCATIONS:
            idx = idx[rng.choice(n, MAX_LOCATIONS, replace=False)]
        out[k] = np.stack(np.unravel_index(idx, label.shape), axis=1).astype(np.int32)
    return out


def _seed_for(case_id: str) -> int:
    return int.from_bytes(hashlib.sha256(case_id.encode()).digest()[:4], "little")


def open_cached_case(cache_dir: str | Path, case_id: str) -> CachedCase:
    """Memory-map one case of the cache.

    Raises:
        DataError: the case is missing or incomplete (rebuild the cache).
    """
    p = _paths(Path(cache_dir), case_id)
    if not p["meta"].is_file():
        raise DataError(f"case {case_id}: not in the cache {cache_dir} (run build_cache / medzoo preprocess)")
    try:
        meta = json.loads(p["meta"].read_bytes().decode("utf-8"))
        image = np.load(p["image"], mmap_mode="r")
        label = np.load(p["label"], mmap_mode="r") if meta.get("has_label") else None
        locs = {}
        if p["locations"].is_file():
            with np.load(p["locations"], allow_pickle=False) as z:
                locs = {int(k.split("_")[1]): z[k] for k in z.files}
    except (OSError, ValueError) as err:
        raise DataError(f"case {case_id}: cache files unreadable ({err}); rebuild the cache") from err
    return CachedCase(case_id, image, label, meta, locs)


def _case_problem(p: dict[str, Path], expected_hash: str) -> str | None:
    """Why a cached case cannot be used: None when it can; ``""`` when it is simply absent or stale (made
    for other settings or source files, or interrupted before its JSON was written); otherwise what is
    damaged in it, naming the file."""
    try:
        meta = json.loads(p["meta"].read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return ""
    except (OSError, ValueError) as err:  # ValueError: truncated or garbage JSON
        return f"{p['meta']}: unreadable ({type(err).__name__})"
    if not isinstance(meta, dict):
        return f"{p['meta']}: not a JSON object"
    if meta.get("hash") != expected_hash:
        return ""
    image = _npy_shape(p["image"], np.float32)
    if isinstance(image, str):
        return image
    if meta.get("has_label"):
        label = _npy_shape(p["label"], np.uint8)
        if isinstance(label, str):
            return label
        if label != image[1:]:
            return f"{p['label']}: shape {label} does not match the image's {image[1:]}"
        if p["locations"].exists():
            try:
                with zipfile.ZipFile(p["locations"]) as z:
                    bad = z.testzip()
            except (OSError, zipfile.BadZipFile) as err:
                return f"{p['locations']}: unreadable ({err})"
            if bad is not None:
                return f"{p['locations']}: {bad} fails its checksum"
    return None


def _npy_shape(path: Path, dtype: type) -> tuple[int, ...] | str:
    """The shape of a whole ``.npy`` file of ``dtype``, or what is wrong with it (naming it): its header
    must parse and its size must be the header's plus the array's."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)  # fmt: skip
            if read_header is None:
                raise ValueError(f"format version {version}")
            shape, fortran, found = read_header(f)
            start = f.tell()
        size = path.stat().st_size
    except FileNotFoundError:
        return f"{path}: missing"
    except (OSError, ValueError, SyntaxError) as err:
        return f"{path}: not a readable .npy array ({type(err).__name__}: {err})"
    if found != np.dtype(dtype) or fortran:
        return f"{path}: holds {found}{' (Fortran order)' if fortran else ''}, not {np.dtype(dtype)}"
    expected = start + int(np.prod(shape, dtype=np.int64)) * found.itemsize
    if size != expected:
        return f"{path}: {size} bytes where its header promises {expected} (truncated or damaged)"
    return tuple(int(n) for n in shape)


def _write_case(cache_dir: Path, case: Case, info: DatasetInfo, preprocessor, digest: str) -> None:
    from medzoo.data.loading import load_case

    p = _paths(cache_dir, case.case_id)
    p["meta"].unlink(missing_ok=True)  # invalidate first: a crash below leaves the case "to redo"
    image, label = load_case(case, info)
    pre = preprocessor.apply(image, label)
    atomic_write(p["image"], lambda tmp: np.save(tmp, pre.image))
    meta = dict(pre.meta)
    meta.update(case_id=case.case_id, hash=digest, has_label=pre.label is not None)
    if pre.label is not None:
        atomic_write(p["label"], lambda tmp: np.save(tmp, pre.label))
        locs = class_locations(pre.label, info.num_classes, seed=_seed_for(case.case_id))
        arrays = {f"class_{k}": v for k, v in locs.items()}
        atomic_write(p["locations"], lambda tmp: np.savez(tmp, **arrays))
        counts = np.bincount(pre.label.reshape(-1), minlength=info.num_classes)
        meta["class_voxels"] = [int(c) for c in counts]
    else:
        p["label"].unlink(missing_ok=True)
        p["locations"].unlink(missing_ok=True)
    atomic_write_text(p["meta"], json.dumps(meta, indent=1))


def build_cache(
    info: DatasetInfo,
    plan: Plan,
    cache_dir: str | Path,
    cases: list[Case] | list[str] | None = None,
    *,
    skip_bad_cases: bool = False,
    progress: bool = True,
) -> list[CachedCase]:
    """Preprocess cases once into ``cache_dir`` (reusing valid entries) and memory-map them.

    Args:
        info: the dataset.
        plan: preprocessing settings (``target_spacing``, ``crop_to_nonzero``, ``normalization``,
            ``norm_stats``).
        cache_dir: the cache folder (created).
        cases: cases (or case ids) to include; None = ``info.cases`` (the labelled ones).
        skip_bad_cases: log and skip a case that raises :class:`DataError` instead of stopping.
        progress: show a tqdm progress bar.

    Returns:
        The cached cases, in the order given.

    Raises:
        DataError: a bad case (naming it) unless ``skip_bad_cases``; nothing half-written stays behind.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    if cases is None:
        selected = list(info.cases)
    else:
        by_id = {c.case_id: c for c in info.cases + info.test_cases}
        selected = []
        for c in cases:
            if isinstance(c, Case):
                selected.append(c)
            elif c in by_id:
                selected.append(by_id[c])
            else:
                raise DataError(f"case {c}: not in the dataset {info.root}")
    settings = preprocessing_settings(plan, info)
    with locked(cache_dir):  # runs sharing a cache fill it one at a time; the later ones reuse it
        return _fill(cache_dir, selected, info, plan, settings, skip_bad_cases, progress)


def _fill(cache_dir: Path, selected: list[Case], info: DatasetInfo, plan: Plan, settings: dict,
          skip_bad_cases: bool, progress: bool) -> list[CachedCase]:  # fmt: skip
    from medzoo.transforms.preprocess import Preprocessor

    preprocessor = Preprocessor(plan)
    todo = []
    for case in selected:
        digest = case_hash(case, settings)
        problem = _case_problem(_paths(cache_dir, case.case_id), digest)
        if problem:
            log.warning("%s; preprocessing case %s again", problem, case.case_id)
        if problem is not None:
            todo.append((case, digest))
    if todo:
        log.info("preprocessing %d of %d cases into %s", len(todo), len(selected), cache_dir)
    bad: set[str] = set()
    iterator = todo
    if progress and todo:
        from tqdm import tqdm

        iterator = tqdm(todo, desc="preprocess", unit="case", leave=False)
    for case, digest in iterator:
        try:
            _write_case(cache_dir, case, info, preprocessor, digest)
        except DataError as err:
            for f in _paths(cache_dir, case.case_id).values():
                f.unlink(missing_ok=True)
            if not skip_bad_cases:
                raise
            log.warning("skipping bad case %s: %s", case.case_id, err)
            bad.add(case.case_id)
    if todo:
        atomic_write_text(cache_dir / "settings.json", json.dumps(settings, indent=1))
    return [open_cached_case(cache_dir, c.case_id) for c in selected if c.case_id not in bad]


def load_cache(cache_dir: str | Path) -> list[CachedCase]:
    """Every valid case of a cache folder (sorted by id), without re-checking the source files."""
    from medzoo.data.layouts import natural_key

    cache_dir = Path(cache_dir)
    ids = sorted((p.stem for p in cache_dir.glob("*.json") if p.name not in ("settings.json", "plan.json")), key=natural_key)
    return [open_cached_case(cache_dir, i) for i in ids]


def preprocess_dataset(
    root: str | Path,
    cache_dir: str | Path,
    plan: Plan | str | Path | None = None,
    *,
    layout: str | None = None,
    skip_bad_cases: bool = False,
    progress: bool = True,
) -> tuple[Plan, list[CachedCase]]:
    """``medzoo preprocess``: load a dataset, plan it if no plan is given, and fill the cache.

    Args:
        root: dataset folder.
        cache_dir: cache folder; ``plan.json`` is written there too.
        plan: a Plan, a ``plan.json`` path, or None to run the planner (with a fingerprint when a
            channel needs dataset statistics, e.g. CT).
        layout: dataset layout name (None: auto-detect).
        skip_bad_cases: log and skip bad cases.
        progress: tqdm progress bar.

    Returns:
        ``(plan, cached cases)``.
    """
    from medzoo.data.layouts import load_dataset

    info = load_dataset(root, layout)
    if plan is None:
        from medzoo.planning.planner import make_plan

        plan = make_plan(info)
        if "ct" in plan.normalization and not plan.norm_stats:
            from medzoo.planning.fingerprint import compute_fingerprint

            plan = make_plan(info, compute_fingerprint(info, skip_bad_cases=skip_bad_cases))
    elif not isinstance(plan, Plan):
        plan = Plan.load(plan)
    cached = build_cache(info, plan, cache_dir, skip_bad_cases=skip_bad_cases, progress=progress)
    plan.save(Path(cache_dir) / "plan.json")
    return plan, cached
