"""Small shared helpers: atomic writes, file locks, durations, the ignore label."""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medzoo.errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks (see locked)
    fcntl = None  # type: ignore[assignment]

#: Class index of "not annotated" voxels in preprocessed label maps (uint8): a dataset's ignore label (a label
#: named ``ignore`` in an nnU-Net v2 dataset.json, or ``ignore_label=V``) is mapped to it. Losses and validation
#: metrics skip these voxels; samplers centre patches on annotated ones. It is never a predicted class.
IGNORE_INDEX = 255


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Write a file atomically: ``write(tmp_path)`` fills a temp file in the same folder, then it is renamed.

    A crash, interrupt or full disk leaves either the old file or the new one, never a half-written file.
    ``tmp_path`` keeps ``path``'s suffixes so libraries that pick a format by extension still work. The new
    file gets the permissions any other tool would give it (``0666 & ~umask``); a file replaced in place
    keeps its mode. Its data is flushed to disk before the rename, and the rename itself after it, so a
    power cut cannot leave an empty file under the final name either.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, _mode_for(path))  # mkstemp makes it private; the writer may also have recreated it
        _fsync(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    _fsync(path.parent)
    return path


#: The name :func:`atomic_write` gives its temporary file (``tempfile.mkstemp``: the prefix, 8 random characters,
#: the suffix): ``.<name up to its first dot>.<8 characters><the name's suffixes, or .tmp>``, e.g.
#: ``.scan0.k2x_9qa7.nii.gz`` for ``scan0.nii.gz``. Only a process killed before the rename leaves one behind.
ATOMIC_TEMP_NAME = re.compile(r"\.[^.]*\.[a-z0-9_]{8}\..+")


def is_atomic_temp(name: str) -> bool:
    """Whether ``name`` is the name of an :func:`atomic_write` temporary file (see :data:`ATOMIC_TEMP_NAME`)."""
    return ATOMIC_TEMP_NAME.fullmatch(name) is not None


def remove_stale_temp_files(folder: str | Path, before: float) -> list[Path]:
    """Remove the :func:`atomic_write` temporary files directly in ``folder`` last modified before ``before``
    (a ``time.time()``): what a process killed midway through a write left behind. Other files, and
    temporary files of a write still going on (modified since ``before``), are left alone.

    Returns:
        The files removed.
    """
    folder = Path(folder)
    removed = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        try:
            if is_atomic_temp(path.name) and path.is_file() and path.stat().st_mtime < before:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:  # gone meanwhile
            continue
    return removed


def _mode_for(path: Path) -> int:
    """The mode of the file being replaced, else what ``open()`` would give a new file."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~current_umask()


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file or a folder) to disk; folders that cannot be opened (other OSes) are skipped."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():  # some filesystems refuse fsync on folders; a file that cannot be synced is not saved
            raise
    finally:
        os.close(fd)


_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process's umask, read without changing it from ``/proc/self/status`` (a umask a test or a user
    changes later is seen); where that is not available, set to 022 and restored at once, under a lock."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Atomically write ``data`` to ``path``."""
    return atomic_write(path, lambda p: p.write_bytes(data))


@contextmanager
def locked(path: str | Path, *, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive advisory lock (``flock``) on ``path`` (a folder, or a file created if missing).

    The kernel drops the lock when the process ends, even by ``kill -9``, so a crash never leaves it stuck.
    Yields True while held; with ``blocking=False`` yields False at once when another process holds it.
    Where ``flock`` does not exist (Windows), or the filesystem refuses it, yields True without a lock.
    """
    fd = lock_fd(path, blocking=blocking)
    if fd == -2:
        yield False
        return
    try:
        yield True
    finally:
        if fd >= 0:
            os.close(fd)


def lock_fd(path: str | Path, *, blocking: bool = True) -> int:
    """Take the lock :func:`locked` takes and return its descriptor (close it to release): -1 when locks are
    not available here (proceed without), -2 when ``blocking=False`` and another process holds it."""
    if fcntl is None:
        return -1
    path = Path(path)
    flags = os.O_RDONLY if path.is_dir() else os.O_RDWR | os.O_CREAT
    fd = os.open(path, flags, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return -2
    except OSError:  # e.g. a network filesystem without locks
        os.close(fd)
        return -1
    return fd


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(text: str | float | int) -> float:
    """Seconds from ``"90"``, ``"90s"``, ``"10m"``, ``"1.5h"`` or ``"1d"``."""
    if isinstance(text, (int, float)):
        return float(text)
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(f"cannot read duration '{text}' (examples: 90s, 10m, 1.5h)")
    value, unit = float(match.group(1)), match.group(2) or "s"
    return value * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def read_json_object(path: str | Path) -> dict[str, Any]:
    """The JSON object in ``path``, or ``{}`` when the file is missing, unreadable or not an object (for
    optional side files of a run folder, such as config.json or splits.json)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
