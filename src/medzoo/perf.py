"""Runtime knobs for CPU speed: thread counts and optional ``torch.compile``.

What was measured (``python -m benchmarks``; numbers in ``benchmarks/README.md``) decided the defaults:

* Threads: torch's intra-op pool should match the cores this process may use (``os.sched_getaffinity``), and
  the inter-op pool is kept small (1): U-Net training has no independent ops to overlap on CPU, and extra
  inter-op threads only compete with the data-loader workers.
* ``torch.compile`` is off by default: on this CPU it did not pay back its compile time for 3D U-Nets in a
  short run (see the report); switch it on with ``compile=True`` or ``MEDZOO_COMPILE=1``.
* ``channels_last_3d`` and bf16 autocast were slower on the measured CPU and are not used.

Example:
    >>> from medzoo.perf import configure_threads, maybe_compile
    >>> configure_threads()           # all available cores, 1 inter-op thread
    >>> model = maybe_compile(model)  # compiled only if MEDZOO_COMPILE=1
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

logger = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "on"}


def available_cores() -> int:
    """CPU cores this process may run on (respects affinity / container limits where visible)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def configure_threads(num_threads: int | None = None, interop_threads: int | None = 1) -> int:
    """Set torch's intra-op threads (default: :func:`available_cores`) and, once, its inter-op threads.

    ``MEDZOO_NUM_THREADS`` overrides the default. The inter-op pool can only be sized before torch runs its
    first parallel op; later calls keep whatever is set and log at debug level.

    Returns:
        The intra-op thread count now in effect.
    """
    if num_threads is None:
        env = os.environ.get("MEDZOO_NUM_THREADS")
        num_threads = int(env) if env else available_cores()
    torch.set_num_threads(max(1, int(num_threads)))
    if interop_threads is not None and torch.get_num_interop_threads() != interop_threads:
        try:
            torch.set_num_interop_threads(int(interop_threads))
        except RuntimeError:
            logger.debug("inter-op threads already fixed at %d", torch.get_num_interop_threads())
    return torch.get_num_threads()


def compile_requested(compile: bool | None = None) -> bool:
    """Whether to compile: the explicit argument if given, else the ``MEDZOO_COMPILE`` environment variable."""
    if compile is not None:
        return bool(compile)
    return os.environ.get("MEDZOO_COMPILE", "").strip().lower() in _TRUE


def maybe_compile(model: nn.Module, compile: bool | None = None, **options) -> nn.Module:
    """Return ``torch.compile(model, **options)`` if requested (see :func:`compile_requested`), else ``model``.

    The compiled module shares parameters with ``model``; save ``model.state_dict()`` (not the wrapper's),
    or strip the ``_orig_mod.`` prefix. Compilation happens lazily on the first call (tens of seconds on CPU).
    """
    if not compile_requested(compile):
        return model
    options.setdefault("dynamic", False)
    logger.info("compiling %s with torch.compile(%s)", type(model).__name__, options)
    return torch.compile(model, **options)
