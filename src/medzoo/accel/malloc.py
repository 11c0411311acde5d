"""glibc malloc tuning: keep freed activations mapped for reuse instead of faulting them back in every step.

PyTorch's CPU tensors come from malloc. With glibc's defaults a freed block larger than the mmap threshold
(dynamic, at most 32 MiB) is unmapped, and the free top of the heap is trimmed, so the next training step or
window batch page-faults the same memory back in, page by page, zeroed by the kernel. :func:`tune_malloc`
raises the mmap threshold to :data:`MALLOC_KEEP_BYTES` and the trim threshold to 2 GiB: a network's
activations are reused, while volume-sized arrays (a 512^3 float32 scan is 512 MiB) still come from and go
back to the kernel, so preprocessing a large scan leaves no freed copies resident. Process-wide and permanent;
:func:`release_memory` gives the unused part back. Whether to tune is :mod:`medzoo.runtime`'s decision
(``MEDZOO_TUNE_MALLOC``); the gains are in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

__all__ = ["MALLOC_KEEP_BYTES", "release_memory", "tune_malloc"]

logger = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: freed blocks below this size are kept for reuse; larger ones go back to the kernel
MALLOC_KEEP_BYTES = 256 << 20
_MALLOC_TRIM_BYTES = 2**31 - 1  # free heap top kept before trimming (mallopt takes a C int)
_malloc_tuned = False


def _glibc() -> ctypes.CDLL | None:
    """glibc, if this process runs on it (None on macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        return libc
    except (OSError, AttributeError):
        return None


def tune_malloc() -> bool:
    """Let glibc's malloc keep freed blocks below :data:`MALLOC_KEEP_BYTES` for reuse (see the module docstring).

    Returns:
        True if the setting is in effect (now or from an earlier call), False if not on glibc or refused.
    """
    global _malloc_tuned
    if _malloc_tuned:
        return True
    libc = _glibc()
    if libc is None:
        logger.debug("not on glibc: malloc left as it is")
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_KEEP_BYTES) == 1
    ok = libc.mallopt(_M_TRIM_THRESHOLD, _MALLOC_TRIM_BYTES) == 1 and ok
    _malloc_tuned = ok
    logger.debug("glibc malloc: keep freed blocks up to %d bytes (%s)", MALLOC_KEEP_BYTES, "ok" if ok else "refused")
    return ok


def release_memory() -> None:
    """Give free heap memory back to the kernel (``malloc_trim(0)``; a no-op off glibc)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
