"""One training at a time per run folder: a lock on ``RUN/.lock`` held while a run trains there.

Two trainings writing one folder would interleave their checkpoints, metrics and plan; the second one is
refused with a one-line error instead. The lock is an advisory ``flock`` (:func:`medzoo.utils.lock_fd`),
which the kernel drops when the process ends, so a training killed with ``kill -9`` never leaves the folder
stuck; the file itself stays behind, empty of meaning (it holds the last holder's process id, for the
error message). Prediction does not take it: predicting from a run that is still training is allowed.
"""

from __future__ import annotations

import os
from pathlib import Path

from medzoo.errors import ConfigError
from medzoo.utils import lock_fd

__all__ = ["LOCK_NAME", "hold_run_lock", "release_run_lock"]

LOCK_NAME = ".lock"
_held: dict[Path, int] = {}  # run folder -> descriptor holding its lock, in this process


def hold_run_lock(run_dir: str | Path, *, create: bool = True) -> None:
    """Take ``run_dir`` for this process until :func:`release_run_lock` (or the process ends).

    Taking a folder this process already holds does nothing. Where locks are not available (Windows, some
    network filesystems) it does nothing either.

    Args:
        run_dir: the run folder (created when missing and ``create``; otherwise a missing folder is left
            to the caller's own checks).

    Raises:
        ConfigError: another process holds the folder (one line naming it and that process).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        if not create:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
    key = run_dir.resolve()
    if key in _held:
        return
    path = run_dir / LOCK_NAME
    fd = lock_fd(path, blocking=False)
    if fd == -2:
        try:
            holder = f" (process {int(path.read_text().strip())})"
        except (OSError, ValueError):
            holder = ""
        raise ConfigError(f"{run_dir}: another medzoo process is training in this folder{holder}; "
                          "wait for it to finish, or choose another --out")  # fmt: skip
    if fd >= 0:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        _held[key] = fd


def release_run_lock(run_dir: str | Path) -> None:
    """Give ``run_dir`` back (no-op when this process does not hold it)."""
    fd = _held.pop(Path(run_dir).resolve(), None)
    if fd is not None:
        os.close(fd)
