"""OpenMP thread settings for helper threads (the data loader's workers).

Each Python thread that runs torch ops opens its own OpenMP team, by default as wide as the main thread's. A
loader thread building batches beside the training step then spins a second team on the same cores, and on
a small machine the two teams stall each other while the batch itself needs little compute
(``docs/benchmarks.md``). :func:`single_openmp_thread` gives the calling thread's torch ops one OpenMP thread.

OpenMP keeps the thread count per calling thread, so it is set through OpenMP itself (after torch has
initialised it): ``torch.set_num_threads`` would also change the process-wide default that new threads start
from. Where the OpenMP runtime is not found, nothing changes.
"""

from __future__ import annotations

import ctypes

import torch

__all__ = ["single_openmp_thread"]


def single_openmp_thread() -> bool:
    """Run the calling thread's torch ops on one OpenMP thread; False where OpenMP was not found."""
    torch.get_num_threads()  # torch's lazy per-thread initialisation first, or it would undo the call below
    set_threads = getattr(_openmp(), "omp_set_num_threads", None)
    if set_threads is None:
        return False
    set_threads(1)
    return True


def _openmp() -> ctypes.CDLL | None:
    """The process's loaded symbols (torch's OpenMP runtime among them), or None."""
    try:
        return ctypes.CDLL(None)
    except OSError:  # pragma: no cover - platforms without a global symbol table
        return None
