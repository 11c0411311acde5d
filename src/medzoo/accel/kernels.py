"""medzoo's C++ CPU kernels: built on first use with ``torch.utils.cpp_extension``, called through ctypes.

One library, two kernels:

- group norm and instance norm (one channel per group) fused with a leaky ReLU or ReLU (``norm_act.cpp``),
  used by :mod:`medzoo.accel.norm`: it passes over a feature map about half as often as PyTorch's norm +
  activation and their backwards, in either memory layout;
- the concatenation of channels-last maps along the channels (``concat.cpp``), used by
  :mod:`medzoo.accel.concat` where no gradient is recorded.

The sources use plain pointers and no torch headers, so they compile in seconds. :func:`load` builds them with
``torch.utils.cpp_extension.load`` (ninja, the compiler in ``$CXX``, else ``c++``) as a plain shared library
into ``<cache>/medzoo_kernels-<key>/``, where the key hashes the sources, the flags, the PyTorch version and
the CPU's feature flags (the build uses ``-march=native``), so a cache shared between machines never hands one
a build for another. A compiler that refuses the flags is tried again with fewer (no 512-bit vector hint, no
OpenMP, no ``-march=native``). A build that fails leaves a ``.failed`` note with the compiler's message beside
its folder, so later processes do not try again (delete the note to retry).

Before first use a build is checked against PyTorch (:mod:`medzoo.accel.check`); a ``checked`` note in its
folder records the pass with the library's SHA-256, and later processes load that very file straight with
ctypes (no ``cpp_extension`` import, no ninja run). A cached build that is not the file its note vouches for
(truncated, overwritten) or cannot be loaded is discarded with one warning and rebuilt. When there is no compiler, or the build or its check fails,
:func:`load` returns None and the callers use PyTorch's ops: same results, slower. Whether to use the
kernels at all, and where the cache is, is decided by :mod:`medzoo.runtime` (``MEDZOO_FUSED_KERNELS``,
``MEDZOO_KERNEL_CACHE``).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from medzoo.utils import atomic_write_text

__all__ = ["FLAGS", "CpuKernels", "compiler", "load", "reset"]

logger = logging.getLogger(__name__)

SOURCES = tuple(Path(__file__).with_name(name) for name in ("norm_act.cpp", "concat.cpp"))  # one library
FLAGS = ("-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp", "-fno-math-errno")
# tried in turn when the compiler refuses FLAGS: without the vector-width hint (a no-op without AVX-512),
# then also without OpenMP threads (one thread, still vectorised), then also without -march=native
_FALLBACK_FLAGS = (
    tuple(f for f in FLAGS if f != "-mprefer-vector-width=512"),
    tuple(f for f in FLAGS if f not in ("-mprefer-vector-width=512", "-fopenmp")) + ("-fopenmp-simd",),
    tuple(f for f in FLAGS if f not in ("-mprefer-vector-width=512", "-fopenmp", "-march=native")),
)

_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1}  # the kernel's dtype argument
_lock = threading.Lock()
_state: dict[Path, CpuKernels | None] = {}  # per cache folder: the loaded kernels or None, once tried


def compiler(cxx: str | None) -> str | None:
    """The C++ compiler ``cpp_extension`` will run (``cxx``: the value of ``$CXX``, else ``c++``), if it is on
    the PATH."""
    return shutil.which(cxx or "c++")


def _cpu_signature() -> str:
    """The CPU's model and feature flags (what ``-march=native`` depends on), or the platform's name."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            keep = [line for line in f if line.startswith(("flags", "model name", "Features", "CPU part"))]
        return "".join(sorted(set(keep)))
    except OSError:
        return platform.processor() + platform.machine()


def _build_key() -> str:
    parts = [path.read_bytes() for path in SOURCES]
    parts += [" ".join(FLAGS).encode(), torch.__version__.encode(), _cpu_signature().encode()]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()[:16]


class CpuKernels:
    """The loaded kernel library: calls over raw pointers (see the C++ sources).

    Use :meth:`norm_forward` and :meth:`norm_backward` through :mod:`medzoo.accel.norm`, which checks the
    tensors (CPU, fp32/bf16, dense in one of the two layouts) before it calls them. ``groups`` channel groups
    share statistics (``groups == C``: instance norm); ``mean`` and ``invstd`` are (B, groups).
    :meth:`concat_channels_last` through :func:`medzoo.accel.concat.cat_channels`.
    """

    def __init__(self, path: Path) -> None:
        lib = ctypes.CDLL(str(path))
        p, i64, f32, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
        self._fwd = lib.medzoo_norm_act_forward
        self._fwd.argtypes = [p] * 6 + [i64] * 4 + [f32, f32] + [i32] * 4
        self._fwd.restype = i32
        self._bwd = lib.medzoo_norm_act_backward
        self._bwd.argtypes = [p] * 9 + [i64] * 4 + [f32] + [i32] * 4
        self._bwd.restype = i32
        self._cat = lib.medzoo_concat_rows
        self._cat.argtypes = [p, p, i64, p, i64, i32]
        self._cat.restype = i32
        self.path = path

    @staticmethod
    def _ptr(t):  # None -> NULL
        return None if t is None else t.data_ptr()

    def norm_forward(self, x, out, weight, bias, mean, invstd, eps: float, slope: float | None,
                     channels_last: bool, threads: int, groups: int) -> None:
        """Normalise ``x`` (B, C, *S) into ``out``; write each sample's per-group mean and 1/std (B, groups)."""
        b, c = x.shape[:2]
        rc = self._fwd(x.data_ptr(), out.data_ptr(), self._ptr(weight), self._ptr(bias), mean.data_ptr(),
                       invstd.data_ptr(), b, c, groups, x[0, 0].numel(), eps, 0.0 if slope is None else slope,
                       int(slope is not None), int(channels_last), _dtype_code(x), threads)
        if rc != 0:
            raise RuntimeError(f"fused norm: unsupported dtype {x.dtype} or {groups} groups of {c} channels")

    def norm_backward(self, grad, x, dx, weight, bias, mean, invstd, dweight, dbias, slope: float | None,
                      channels_last: bool, threads: int, groups: int) -> None:
        """Write the input gradient into ``dx`` (unless None) and add the parameter gradients to ``dweight`` /
        ``dbias`` (unless None)."""
        b, c = x.shape[:2]
        rc = self._bwd(grad.data_ptr(), x.data_ptr(), self._ptr(dx), self._ptr(weight), self._ptr(bias),
                       mean.data_ptr(), invstd.data_ptr(), self._ptr(dweight), self._ptr(dbias), b, c, groups,
                       x[0, 0].numel(), 0.0 if slope is None else slope, int(slope is not None),
                       int(channels_last), _dtype_code(x), threads)
        if rc != 0:
            raise RuntimeError(f"fused norm: unsupported dtype {x.dtype} or {groups} groups of {c} channels")

    def concat_channels_last(self, tensors, out, threads: int) -> None:
        """Write the channels-last maps ``tensors`` (each (B, C_i, *S), dense, one dtype) into ``out``
        (B, sum C_i, *S, channels-last) as their concatenation along the channels."""
        count = len(tensors)
        pointers = (ctypes.c_void_p * count)(*[t.data_ptr() for t in tensors])
        row_bytes = (ctypes.c_int64 * count)(*[t.shape[1] * t.element_size() for t in tensors])
        rc = self._cat(ctypes.cast(pointers, ctypes.c_void_p), ctypes.cast(row_bytes, ctypes.c_void_p), count,
                       out.data_ptr(), out.numel() // max(1, out.shape[1]), threads)
        if rc != 0:
            raise RuntimeError(f"concat: bad sizes {[tuple(t.shape) for t in tensors]}")


def _dtype_code(x) -> int:
    return _DTYPE_CODES.get(x.dtype, -1)


def load(cache: Path, cxx: str | None = None) -> CpuKernels | None:
    """The kernel library built in (or loaded from) the folder ``cache`` with the compiler ``cxx`` (``$CXX``;
    None: ``c++``), checked before first use; None where it cannot be had (see the module docstring).
    Thread-safe; tried once per process and folder."""
    cache = Path(cache)
    if cache in _state:
        return _state[cache]
    with _lock:
        if cache not in _state:
            _state[cache] = _try_load(cache, cxx)
    return _state[cache]


def reset() -> None:
    """Forget the loaded kernels (tests; a later :func:`load` builds or loads them again)."""
    with _lock:
        _state.clear()


def _try_load(cache: Path, cxx: str | None) -> CpuKernels | None:
    folder = _writable(cache) / f"medzoo_kernels-{_build_key()}"
    library, note = folder / f"{folder.name.replace('-', '_')}.so", folder / "checked"
    if note.exists():  # a build that passed its check: load it only if it is still the very file checked
        try:
            if _read_note(note) == _check_stamp(library):
                return CpuKernels(library)
            problem = "the library is not the one that passed its check"
        except OSError as err:  # unreadable, or not a library
            problem = _first_line(err)
        logger.warning("discarding the cached kernel build %s (%s); building it again", library, problem)
        shutil.rmtree(folder, ignore_errors=True)
    if compiler(cxx) is None:
        logger.info("no C++ compiler found: norms and concatenations run on PyTorch's ops")
        return None
    failed = folder.with_suffix(".failed")
    reason = _read_note(failed)
    if reason:
        logger.info("an earlier kernel build failed (delete %s to retry): using PyTorch's ops", failed)
        return None
    if reason is not None:
        logger.warning("discarding a damaged note %s; building medzoo's CPU kernels again", failed)
        failed.unlink(missing_ok=True)
    try:
        kernels = CpuKernels(_build(folder, library.stem))
        from medzoo.accel.check import check_kernels

        check_kernels(kernels)
    except Exception as err:  # noqa: BLE001 - any failure means: use PyTorch's ops
        logger.warning("medzoo's CPU kernels unavailable, using PyTorch's ops (%s)", _first_line(err))
        return None
    try:
        _write_note(note, _check_stamp(library))
    except OSError as err:  # the check passed; only later processes will run it again
        logger.info("could not record the kernels' check in %s (%s)", note, err)
    return kernels


def _build(folder: Path, name: str) -> Path:
    """Compile the sources into ``folder`` with ``cpp_extension`` and return the library's path; on failure
    leave a ``.failed`` note beside the folder and raise."""
    from torch.utils import cpp_extension

    folder.mkdir(parents=True, exist_ok=True)
    errors = []
    for flags in (FLAGS, *_FALLBACK_FLAGS):
        ldflags = ["-fopenmp"] if "-fopenmp" in flags else []
        try:
            built = cpp_extension.load(name, [str(s) for s in SOURCES], extra_cflags=list(flags),
                                       extra_ldflags=ldflags, build_directory=str(folder), is_python_module=False,
                                       verbose=False)
        except (RuntimeError, OSError, subprocess.SubprocessError) as err:
            errors.append(f"{' '.join(flags)}: {str(err).strip()[-800:]}")
            continue
        logger.info("built medzoo's CPU kernels (%s) in %s", " ".join(flags), folder)
        library = folder / f"{name}.so"
        if Path(built) != library:  # cpp_extension renames a second build of one name in a process (name_v1)
            os.replace(built, library)
        return library
    _write_note(folder.with_suffix(".failed"), "\n".join(errors))
    raise RuntimeError(errors[0])


def _check_stamp(library: Path) -> str:
    """What a passed check vouches for: this very file (its SHA-256) under this PyTorch. Checked before the
    library is loaded, since loading a truncated library can crash the process."""
    return f"{torch.__version__} {hashlib.sha256(library.read_bytes()).hexdigest()}"


def _writable(folder: Path) -> Path:
    """``folder``, created if need be; a per-user folder under the temp dir when it cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder
    except OSError:
        pass
    fallback = Path(tempfile.gettempdir()) / f"medzoo-kernels-{os.getuid() if hasattr(os, 'getuid') else 'user'}"
    logger.info("kernel cache %s is not writable: using %s", folder, fallback)
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def _write_note(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def _read_note(path: Path) -> str | None:
    """A note's text; None when there is none; "" when it is damaged (empty, or not text)."""
    try:
        return path.read_bytes().decode("utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return ""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
