"""CPU kernels that PyTorch has no fused or fast op for, compiled on first use and called through ctypes.

Two kernels, built into one library:

- group norm and instance norm (one channel per group) fused with a leaky ReLU or ReLU
  (``norm_act.cpp``), used on CPU tensors by :func:`medzoo.models.layers.norm.instance_norm_act`,
  :class:`~medzoo.models.layers.norm.GroupNorm` and :func:`~medzoo.models.layers.norm.norm_act`. It passes
  over a feature map about half as often as PyTorch's norm + activation and their backwards, in either
  memory layout. Whole training steps, kernel against the fallback on PyTorch's ops (``python -m
  benchmarks.kernels``, medians of 5 interleaved steps, channels-last): in bf16 nnU-Net's network 1.16x at
  1x1x64^3 and 1.19x on hippocampus patches, unet3d 1.18x, segresnet 1.34x, resnet3d_vae 1.50x; in fp32
  1.04-1.07x. Per layer: ``python -m benchmarks.layouts``, "norm+lrelu" rows.
- the concatenation of channels-last maps along the channels (``concat.cpp``), used by
  :func:`medzoo.models.layers.concat.cat_channels` where no gradient is recorded (see that module).

The sources are compiled once per machine with the system C++ compiler (``$CXX``, else ``c++`` / ``g++`` /
``clang++``; about two seconds; with OpenMP and ``-march=native`` where the compiler takes them, else without)
into ``$MEDZOO_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/medzoo/kernels``, else ``~/.cache/medzoo/kernels`` (a
per-user folder under the temp dir when that cannot be written). The file name carries a hash of the sources,
the flags, the compiler and the CPU's feature flags, so a cache shared between machines never hands one a
build for another. The build is written to a temporary file and renamed into place, so processes that build
at once (DDP ranks) do not see half a file. A build that fails leaves a ``.failed`` note with the compiler's
message beside it, so later processes do not try again (delete the note to retry). A library found damaged
in the cache (truncated or overwritten; its ELF structure is checked before it is loaded, as loading a
truncated one kills the process), or a note that is not text, is deleted with one warning and built again.
Before first use the kernels are checked against PyTorch on small maps (:mod:`medzoo.kernels.check`); a
``.checked`` note records the pass (for that file and PyTorch version), so later processes skip the check (it
costs about 0.3 s, mostly the first autograd backward's imports, which a process that only predicts would not
pay otherwise).

When there is no compiler, the build or the check fails, or ``MEDZOO_FUSED_KERNELS=0``, :func:`load` returns
None (with one warning for a failure) and the callers use PyTorch's ops: same results, slower.

Example:
    >>> from medzoo import kernels
    >>> kernels.load() is not None   # True where the kernels built and passed their checks
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from medzoo.perf import _env_flag
from medzoo.utils import atomic_write_text, current_umask

__all__ = ["FLAGS", "CpuKernels", "cache_dir", "enabled", "load"]

logger = logging.getLogger(__name__)

SOURCES = tuple(Path(__file__).with_name(name) for name in ("norm_act.cpp", "concat.cpp"))  # one library
FLAGS = ("-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp", "-fPIC", "-shared", "-fno-math-errno")
# tried in turn when the compiler refuses FLAGS: without the vector-width hint (512-bit vectors were 10-25 %
# faster on this AVX-512 CPU; a no-op without AVX-512), then also without OpenMP threads (one thread, still
# vectorised), then also without -march=native
_FALLBACK_FLAGS = (
    tuple(f for f in FLAGS if f != "-mprefer-vector-width=512"),
    tuple(f for f in FLAGS if f not in ("-mprefer-vector-width=512", "-fopenmp")) + ("-fopenmp-simd",),
    tuple(f for f in FLAGS if f not in ("-mprefer-vector-width=512", "-fopenmp", "-march=native")),
)

_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1}  # the kernel's dtype argument
_lock = threading.Lock()
_state: dict[str, object] = {}  # "kernel": the loaded kernel or None, once tried


def enabled() -> bool:
    """False when ``MEDZOO_FUSED_KERNELS`` is set to 0/false/no/off."""
    return _env_flag("MEDZOO_FUSED_KERNELS", True)


def cache_dir() -> Path:
    """Where built kernels are kept (see the module docstring)."""
    if os.environ.get("MEDZOO_KERNEL_CACHE"):
        return Path(os.environ["MEDZOO_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "medzoo" / "kernels"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_signature() -> str:
    """The CPU's model and feature flags (what ``-march=native`` depends on), or the platform's name."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            keep = [line for line in f if line.startswith(("flags", "model name", "Features", "CPU part"))]
        return "".join(sorted(set(keep)))
    except OSError:
        return platform.processor() + platform.machine()


def _build(compiler: str) -> Path:
    """Compile the kernels into the cache (if they are not there yet) and return the library's path."""
    sources = [path.read_bytes() for path in SOURCES]
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256(b"\0".join([*sources, " ".join(FLAGS).encode(), version.encode(),
                                     _cpu_signature().encode()])).hexdigest()[:16]
    folder = _writable(cache_dir())
    target = folder / f"medzoo_kernels-{key}.so"
    failed = target.with_suffix(".failed")
    if target.exists():
        return target
    note = _read_note(failed)
    if note:
        raise RuntimeError(f"an earlier build failed (delete {failed} to retry): {note[-800:]}")
    if note is not None:
        logger.warning("discarding a damaged note %s; building medzoo's CPU kernels again", failed)
        failed.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=folder)
    os.close(fd)
    errors = []
    try:
        start = time.perf_counter()
        for flags in (FLAGS, *_FALLBACK_FLAGS):
            done = subprocess.run([compiler, *flags, *map(str, SOURCES), "-o", tmp], capture_output=True,
                                  text=True, timeout=300)
            if done.returncode == 0:
                os.chmod(tmp, 0o777 & ~current_umask())  # as the compiler would make it, shareable
                os.replace(tmp, target)
                logger.info("built medzoo's CPU kernels in %.1f s (%s): %s", time.perf_counter() - start,
                            " ".join(flags), target)
                return target
            errors.append(f"{compiler} {' '.join(flags)} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
        _write_note(failed, "\n".join(errors))
        raise RuntimeError(errors[0])
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
    """Write ``text`` to ``path`` atomically (a temporary file renamed into place)."""
    atomic_write_text(path, text)


def _read_note(path: Path) -> str | None:
    """A note's text; None when there is none; "" when it is damaged (empty, or not text)."""
    try:
        return path.read_bytes().decode("utf-8").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return ""


def _library_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole ELF shared library, or None. Checked before ``dlopen``, which kills the
    process (SIGBUS) on a truncated library instead of raising. Other formats (macOS) are not checked."""
    try:
        data = path.read_bytes()
    except OSError as err:
        return str(err)
    if sys.platform != "linux":
        return None
    if data[:4] != b"\x7fELF" or data[4] not in (1, 2) or data[5] not in (1, 2):
        return "not an ELF library"
    end = "<" if data[5] == 1 else ">"
    wide = data[4] == 2  # 64-bit
    try:
        phoff, shoff = struct.unpack_from(end + ("QQ" if wide else "II"), data, 0x20 if wide else 0x1C)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(end + "HHHH", data, 0x36 if wide else 0x2A)
        ends = [phoff + phnum * phentsize, shoff + shnum * shentsize]
        for i in range(phnum):
            at = phoff + i * phentsize
            offset, = struct.unpack_from(end + ("Q" if wide else "I"), data, at + (8 if wide else 4))
            filesz, = struct.unpack_from(end + ("Q" if wide else "I"), data, at + (32 if wide else 16))
            ends.append(offset + filesz)
    except struct.error:
        return "truncated"
    return None if max(ends) <= len(data) else f"truncated ({len(data)} of at least {max(ends)} bytes)"


class CpuKernels:
    """The loaded kernel library: calls over raw pointers (see the C++ sources).

    Use :meth:`norm_forward` and :meth:`norm_backward` through :mod:`medzoo.models.layers.norm`, which checks
    the tensors (CPU, fp32/bf16, dense in one of the two layouts) before it calls them. ``groups`` channels
    groups share statistics (``groups == C``: instance norm); ``mean`` and ``invstd`` are (B, groups).
    :meth:`concat_channels_last` through :func:`medzoo.models.layers.concat.cat_channels`.
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


def load() -> CpuKernels | None:
    """The kernel library (norm + activation, concatenation), built and checked on first call; None where it
    cannot be had (see the module docstring). Thread-safe; tried once per process."""
    if not enabled():
        return None
    if "kernel" in _state:
        return _state["kernel"]  # type: ignore[return-value]
    with _lock:
        if "kernel" not in _state:
            _state["kernel"] = _try_load()
    return _state["kernel"]  # type: ignore[return-value]


def _try_load() -> CpuKernels | None:
    compiler = _compiler()
    if compiler is None:
        logger.info("no C++ compiler found: norms and concatenations run on PyTorch's ops")
        return None
    try:
        path = _build(compiler)
        kernel = _open_whole(path)
        if kernel is None:  # damaged in the cache: built again, once
            path = _build(compiler)
            kernel = _open_whole(path, rebuilt=True)
        passed, stamp = path.with_suffix(".checked"), _check_stamp(path)
        if _read_note(passed) != stamp:
            from medzoo.kernels.check import check_kernels

            check_kernels(kernel)
            try:
                _write_note(passed, stamp)
            except OSError as err:  # the check passed; only later processes will run it again
                logger.info("could not record the kernels' check in %s (%s)", passed, err)
    except Exception as err:  # noqa: BLE001 - any failure means: use PyTorch's ops
        logger.warning("medzoo's CPU kernels unavailable, using PyTorch's ops (%s)", err)
        return None
    return kernel


def _open_whole(path: Path, rebuilt: bool = False) -> CpuKernels | None:
    """Load the library after making sure it is whole. A damaged one is deleted with one warning and None is
    returned (so it is built again), unless it was ``rebuilt`` just now (then it raises)."""
    problem = _library_problem(path)
    if problem is None:
        try:
            return CpuKernels(path)
        except OSError as err:  # dlopen refused it
            problem = str(err)
    if rebuilt:
        raise RuntimeError(f"{path}: {problem}")
    logger.warning("discarding a damaged kernel library %s (%s); building it again", path, problem)
    for stale in (path, path.with_suffix(".checked")):
        stale.unlink(missing_ok=True)
    return None


def _check_stamp(library: Path) -> str:
    """What a passed check vouches for: this very file (size, modification time) under this PyTorch."""
    st = library.stat()
    return f"{torch.__version__} {st.st_size} {st.st_mtime_ns}"


def reset() -> None:
    """Forget the loaded kernel (tests; a later :func:`load` builds or loads it again)."""
    with _lock:
        _state.clear()
