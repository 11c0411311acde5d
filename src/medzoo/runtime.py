"""How medzoo runs on this machine: the one module that resolves device, precision, memory layout, threads,
compilation and the speed machinery, for training and prediction alike, and reads every environment variable.

Training (:mod:`medzoo.engine`) and prediction (:mod:`medzoo.inference`) ask it the same questions:

- device: :func:`resolve_device` ("cuda" when available, else "cpu"; a rank's own GPU under torchrun);
- precision: :func:`autocast_dtype` for an ``amp`` mode ("auto", "bf16", "fp16", "none"). "auto" is bf16 on
  a GPU that has it (fp16 on older ones) and on a CPU with native bf16 instructions
  (:func:`cpu_has_native_bf16`: AVX512-BF16 or AMX), else fp32; fp16 is for CUDA only. Training adds a guard
  for networks whose convolutions are too small or narrow for bf16 on the CPU (:func:`training_autocast_dtype`);
- memory layout: :func:`preferred_memory_format` (channels-last on the CPU for the networks whose model card
  says they run faster so);
- threads: :func:`limit_worker_threads` for the data loader's helper threads;
- resampling: :func:`resampler_3d` (the augmentation's 3D warp on the CPU, :mod:`medzoo.accel.warp`);
- compilation: :func:`compile_requested` / :func:`maybe_compile` (off unless asked);
- memory reuse: :func:`tune_malloc` / :func:`release_memory` (:mod:`medzoo.accel.malloc`);
- fused kernels: :func:`fused_kernels` (:mod:`medzoo.accel.kernels`), which the layer factories' norms and
  concatenations use.

Every environment variable medzoo reads is declared in :data:`ENVIRONMENT` and read through :func:`env` (the
table in ``docs/configuration.md`` is :func:`environment_table`). Values are read when asked, so a test or a
benchmark that sets one sees it at once.

Example:
    >>> from medzoo import runtime
    >>> device = runtime.resolve_device(None)
    >>> dtype = runtime.autocast_dtype("auto", device, purpose="prediction")   # None: fp32
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medzoo.accel import kernels as _kernels_module
from medzoo.accel import malloc, threads, warp
from medzoo.errors import ConfigError

__all__ = [
    "AMP_MODES", "BF16_MIN_CONV_VOXELS", "BF16_MIN_CONV_WIDTH", "ENVIRONMENT", "MEMORY_FORMATS", "ConvCensus",
    "EnvVar", "autocast_dtype", "compile_requested", "conv_census", "cpu_has_native_bf16", "cuda_amp_dtype",
    "distributed_env", "env", "environment_table", "fused_kernels", "kernel_cache_dir", "limit_worker_threads",
    "maybe_compile", "model_cache_dir", "preferred_memory_format", "release_memory", "resampler_3d", "resolve_device",
    "training_autocast_dtype", "tune_malloc", "user_cache_dir",
]

logger = logging.getLogger(__name__)

AMP_MODES = ("auto", "bf16", "fp16", "none")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")

# --------------------------------------------------------------------------------------------- environment

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _flag(default: bool) -> Callable[[str | None], bool]:
    def parse(value: str | None) -> bool:
        text = (value or "").strip().lower()
        return True if text in _TRUE else False if text in _FALSE else default

    return parse


def _text(value: str | None) -> str | None:
    return value.strip() or None if value is not None else None


def _integer(default: int) -> Callable[[str | None], int]:
    def parse(value: str | None) -> int:
        try:
            return int(value) if value not in (None, "") else default
        except ValueError:
            return default

    return parse


@dataclass(frozen=True)
class EnvVar:
    """An environment variable medzoo reads: its name, default (as documented), meaning and parser."""

    name: str
    default: str
    meaning: str
    parse: Callable[[str | None], Any]


ENVIRONMENT: tuple[EnvVar, ...] = (
    EnvVar("MEDZOO_FUSED_KERNELS", "1", "0 turns medzoo's C++ CPU kernels (fused norm + activation, channels-last "
           "concatenation) off: the same layers run on PyTorch's ops.", _flag(True)),
    EnvVar("MEDZOO_KERNEL_CACHE", "`$XDG_CACHE_HOME/medzoo/kernels`", "Folder for the compiled kernels (a "
           "per-user temp folder when it cannot be written).", _text),
    EnvVar("MEDZOO_MODEL_CACHE", "`$XDG_CACHE_HOME/medzoo/models`", "Where `predict --model FILE.medzoo` unpacks "
           "packed models (one folder per file content).", _text),
    EnvVar("XDG_CACHE_HOME", "`~/.cache`", "Base of medzoo's caches (kernels, packed models, the planner's device "
           "profiles).", _text),
    EnvVar("CXX", "`c++`", "C++ compiler for the kernels (read by `torch.utils.cpp_extension` too); none found "
           "means PyTorch's ops.", _text),
    EnvVar("MEDZOO_TUNE_MALLOC", "1", "0 leaves glibc's malloc as it is; otherwise `train`, `predict` and "
           "`Predictor` let it keep freed blocks below 256 MiB for reuse (process-wide).", _flag(True)),
    EnvVar("MEDZOO_COMPILE", "0", "1 compiles the training network with `torch.compile` when the config does "
           "not say (`--compile`).", _flag(False)),
    EnvVar("ONEDNN_MAX_CPU_ISA", "(unset)", "oneDNN's own cap on CPU instructions; a cap below "
           "AVX512_CORE_BF16 (e.g. AVX2) makes `--amp auto` keep fp32 on the CPU.", _text),
    EnvVar("DNNL_MAX_CPU_ISA", "(unset)", "Older name of `ONEDNN_MAX_CPU_ISA`, read when that is unset.", _text),
    EnvVar("RANK", "0", "Set by `torchrun`: this process's rank (only rank 0 reports and writes).", _integer(0)),
    EnvVar("LOCAL_RANK", "0", "Set by `torchrun`: the rank on this machine (picks its GPU).", _integer(0)),
    EnvVar("WORLD_SIZE", "1", "Set by `torchrun`: the number of processes (more than 1: distributed training).",
           _integer(1)),
)
_BY_NAME = {var.name: var for var in ENVIRONMENT}


def env(name: str) -> Any:
    """The parsed value of the environment variable ``name`` (declared in :data:`ENVIRONMENT`).

    Raises:
        KeyError: ``name`` is not declared (declare it, so the docs list it).
    """
    var = _BY_NAME[name]
    return var.parse(os.environ.get(name))


def environment_table() -> str:
    """:data:`ENVIRONMENT` as a Markdown table (name, default, meaning), as ``docs/configuration.md`` has it."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    rows += [f"| `{v.name}` | {v.default if v.default.startswith(('`', '(')) else f'`{v.default}`'} | {v.meaning} |"
             for v in ENVIRONMENT]
    return "\n".join(rows)


@dataclass(frozen=True)
class DistributedEnv:
    """What ``torchrun`` told this process (a single process without it)."""

    rank: int
    local_rank: int
    world_size: int


def distributed_env() -> DistributedEnv:
    """Rank, local rank and world size from the environment ``torchrun`` sets."""
    return DistributedEnv(env("RANK"), env("LOCAL_RANK"), env("WORLD_SIZE"))


# -------------------------------------------------------------------------------------------------- device


def resolve_device(requested: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """The device to run on: ``requested``, else CUDA when available, else the CPU; a bare "cuda" gets the GPU
    numbered ``local_rank`` (this rank's own under torchrun)."""
    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


# ----------------------------------------------------------------------------------------------- precision

#: oneDNN ISA caps that keep bf16 dot products (``ONEDNN_MAX_CPU_ISA`` values from AVX512_CORE_BF16 up)
_BF16_ISA_MARKERS = ("BF16", "AMX", "FP16", "AVX10", "ALL", "DEFAULT")


def _onednn_isa_allows_bf16() -> bool:
    """False when the environment caps oneDNN below AVX512_CORE_BF16 (e.g. ``ONEDNN_MAX_CPU_ISA=AVX2``)."""
    cap = env("ONEDNN_MAX_CPU_ISA") or env("DNNL_MAX_CPU_ISA")
    return cap is None or any(marker in cap.upper() for marker in _BF16_ISA_MARKERS)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 dot-product instructions (x86 AVX512-BF16 or AMX tiles) that oneDNN may use.

    There bf16 convolutions are much faster than fp32 ones; elsewhere torch emulates bf16, slower than fp32.
    An ``ONEDNN_MAX_CPU_ISA`` (or ``DNNL_MAX_CPU_ISA``) below ``AVX512_CORE_BF16`` counts as no.
    """
    if not _onednn_isa_allows_bf16():
        return False
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, probe, None)
        try:
            if check is not None and check():
                return True
        except Exception:  # noqa: BLE001 - a private torch probe; unknown means no
            continue
    return False


def cuda_amp_dtype(amp: str) -> torch.dtype | None:
    """Autocast dtype on a CUDA GPU for an ``amp`` mode (None: fp32). "auto": bf16 where the GPU supports it
    (fp32's range, no loss scaling), else fp16."""
    if amp == "none":
        return None
    if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def autocast_dtype(amp: str, device: torch.device | str, purpose: str = "training") -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (None: fp32), the same rule for training and prediction.

    CUDA: :func:`cuda_amp_dtype`. CPU: bf16 with "bf16", and with "auto" where :func:`cpu_has_native_bf16`;
    "fp16" falls back to fp32 with a warning naming ``purpose`` ("training", "prediction"). Other devices and
    "none": fp32.

    Raises:
        ConfigError: ``amp`` is not one of :data:`AMP_MODES`.
    """
    if amp not in AMP_MODES:
        raise ConfigError(f"amp must be one of {', '.join(AMP_MODES)}, got '{amp}'")
    device = torch.device(device)
    if amp == "none" or device.type not in ("cuda", "cpu"):
        return None
    if device.type == "cuda":
        return cuda_amp_dtype(amp)
    if amp == "fp16":
        logger.warning("amp fp16 is for CUDA; %s in fp32 on the CPU (use --amp bf16 or auto)", purpose)
        return None
    return torch.bfloat16 if amp == "bf16" or cpu_has_native_bf16() else None


# oneDNN's bf16 convolution backward now and then returns NaN weight gradients when the input is tiny (seen at
# a few voxels, never at 27 or more): such networks train in fp32 on the CPU.
BF16_MIN_CONV_VOXELS = 64
# bf16 pays on the CPU where convolutions are wide enough (a dynunet step gained little at 4-8 first-stage
# channels, much from 16 up; docs/benchmarks.md)
BF16_MIN_CONV_WIDTH = 16


@dataclass(frozen=True)
class ConvCensus:
    """What the convolutions (kernels wider than 1) of a network see in one forward pass.

    Attributes:
        smallest_input: fewest spatial voxels per channel of any convolution's input (None: no convolution).
        mean_width: mean of ``min(in_channels / groups, out_channels)`` over the convolutions, weighted by
            their multiply-adds (0.0: no convolution).
    """

    smallest_input: int | None
    mean_width: float


def _meta_forward(model: nn.Module, input_shape: Sequence[int]) -> None:
    """One forward pass of ``model`` on the meta device (shapes only: no arithmetic, no weight touched)."""
    state = {name: torch.empty_like(t, device="meta") for name, t in [*model.named_parameters(), *model.named_buffers()]}
    torch.func.functional_call(model, state, (torch.empty(tuple(input_shape), device="meta"),))


@torch.no_grad()
def conv_census(model: nn.Module, input_shape: Sequence[int], device: torch.device | str = "cpu") -> ConvCensus:
    """:class:`ConvCensus` of ``model`` for an eval-mode forward pass of an input shaped ``input_shape``
    (B, C, *S). 1x1 convolutions (heads, or after a global pooling) are left out. The pass runs on the meta
    device; a model that cannot run there is run for real on ``device`` with zeros."""
    seen: list[tuple[int, float, int]] = []  # (input voxels, multiply-adds, width)

    def record(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        c_in = module.in_channels // module.groups
        macs = float(math.prod(out.shape[2:])) * out.shape[0] * c_in * module.out_channels
        macs *= math.prod(module.kernel_size)
        seen.append((math.prod(args[0].shape[2:]), macs, min(c_in, module.out_channels)))

    convs = [m for m in model.modules()
             if isinstance(m, nn.modules.conv._ConvNd) and any(k > 1 for k in m.kernel_size)]
    hooks = [m.register_forward_hook(record) for m in convs]
    was_training = model.training
    model.eval()
    try:
        try:
            _meta_forward(model, input_shape)
        except Exception:  # noqa: BLE001 - e.g. a data-dependent branch: measure on real zeros instead
            seen.clear()
            model(torch.zeros(tuple(input_shape), device=device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    if not seen:
        return ConvCensus(None, 0.0)
    total = sum(macs for _, macs, _ in seen)
    mean_width = sum(macs * width for _, macs, width in seen) / total if total else 0.0
    return ConvCensus(min(voxels for voxels, _, _ in seen), mean_width)


def training_autocast_dtype(amp: str, device: torch.device, model: nn.Module, input_shape: Sequence[int],
                            name: str = "the network") -> torch.dtype | None:
    """:func:`autocast_dtype` for training ``model`` on inputs shaped ``input_shape`` (B, C, *S), with the CPU's
    bf16 guard: fp32 where a convolution sees fewer than :data:`BF16_MIN_CONV_VOXELS` voxels (oneDNN's bf16
    backward can return NaN there), and with "auto" where the convolutions are narrower than
    :data:`BF16_MIN_CONV_WIDTH` channels on average (:func:`conv_census`). Shapes only, so the same run always
    gets the same precision."""
    return bf16_guard(autocast_dtype(amp, device, "training"), model, input_shape, device, amp == "auto", name)


def bf16_guard(dtype: torch.dtype | None, model: nn.Module, input_shape: Sequence[int], device: torch.device,
               auto: bool = False, name: str = "the network") -> torch.dtype | None:
    """``dtype``, or None (fp32) where bf16 training on the CPU is unsafe or, with ``auto``, not worth it (see
    :func:`training_autocast_dtype`)."""
    if dtype != torch.bfloat16 or torch.device(device).type != "cpu":
        return dtype
    census = conv_census(model, input_shape, device)
    patch = "x".join(map(str, input_shape[2:]))
    if census.smallest_input is not None and census.smallest_input < BF16_MIN_CONV_VOXELS:
        logger.warning("training in fp32, not bf16: a convolution of %s sees only %d voxels of a %s patch (bf16 "
                       "needs %d; oneDNN's bf16 backward is unreliable below that)", name, census.smallest_input,
                       patch, BF16_MIN_CONV_VOXELS)
        return None
    if auto and census.mean_width < BF16_MIN_CONV_WIDTH:
        logger.info("training in fp32: %s's convolutions are %.1f channels wide on average, too narrow to gain "
                    "from bf16 (from %d)", name, census.mean_width, BF16_MIN_CONV_WIDTH)
        return None
    return dtype


# ------------------------------------------------------------------------------------------- memory layout


def preferred_memory_format(setting: str, spatial_dims: int, device: torch.device | str,
                            card_prefers_channels_last: bool) -> torch.memory_format | None:
    """Memory layout to train or predict in (None: PyTorch's default, contiguous).

    Args:
        setting: "channels_last", "contiguous" or "auto" (channels-last on the CPU when the model's card says
            it runs faster so, ``card_prefers_channels_last``; contiguous on GPUs, not measured there).
        spatial_dims: 2 (``torch.channels_last``) or 3 (``torch.channels_last_3d``); other dims: None.
        device: where it trains or predicts.
        card_prefers_channels_last: ``ModelCard.channels_last`` of the network
            (:func:`medzoo.models.registry.prefers_channels_last`).

    Raises:
        ConfigError: ``setting`` is not one of :data:`MEMORY_FORMATS`.
    """
    if setting not in MEMORY_FORMATS:
        raise ConfigError(f"memory_format must be one of {', '.join(MEMORY_FORMATS)}, got '{setting}'")
    if setting == "contiguous" or spatial_dims not in (2, 3):
        return None
    if setting == "auto" and (not card_prefers_channels_last or torch.device(device).type != "cpu"):
        return None
    return torch.channels_last_3d if spatial_dims == 3 else torch.channels_last


# ------------------------------------------------------------------------------------- threads and memory


def limit_worker_threads() -> None:
    """Give the calling helper thread (a data-loader worker) one OpenMP thread for its torch ops, so it does
    not spin a second full-width team beside the training step (:mod:`medzoo.accel.threads`)."""
    threads.single_openmp_thread()


def tune_malloc(enable: bool | None = None) -> bool:
    """Let glibc's malloc keep freed activations for reuse (:mod:`medzoo.accel.malloc`), unless ``enable`` is
    False or, when it is None, ``MEDZOO_TUNE_MALLOC=0``. Returns whether the setting is in effect."""
    if not (env("MEDZOO_TUNE_MALLOC") if enable is None else enable):
        return False
    return malloc.tune_malloc()


def release_memory() -> None:
    """Give free heap memory back to the kernel (a no-op off glibc)."""
    malloc.release_memory()


def resampler_3d(device: torch.device | str) -> Callable[..., Any] | None:
    """The resampler that replaces 3D ``grid_sample`` on ``device``: on the CPU, where PyTorch's 3D sampler is
    a scalar loop, :func:`medzoo.accel.warp.sample_by_slices` (the same values from vectorised 2D calls); None
    elsewhere (``grid_sample`` itself)."""
    return warp.sample_by_slices if torch.device(device).type == "cpu" else None


# ------------------------------------------------------------------------------------------- compilation


def compile_requested(compile: bool | None = None) -> bool:
    """Whether to compile: the explicit argument if given, else ``MEDZOO_COMPILE``."""
    return bool(compile) if compile is not None else env("MEDZOO_COMPILE")


def maybe_compile(model: nn.Module, compile: bool | None = None, **options) -> nn.Module:
    """``torch.compile(model, **options)`` if requested (:func:`compile_requested`), else ``model``.

    The compiled module shares parameters with ``model``; save ``model.state_dict()`` (not the wrapper's).
    Compilation happens lazily on the first call.
    """
    if not compile_requested(compile):
        return model
    options.setdefault("dynamic", False)
    logger.info("compiling %s with torch.compile(%s)", type(model).__name__, options)
    return torch.compile(model, **options)


# ------------------------------------------------------------------------------------------ fused kernels


def user_cache_dir(kind: str) -> Path:
    """medzoo's per-user cache folder for ``kind`` ("kernels", "models", "planner"):
    ``$XDG_CACHE_HOME/medzoo/<kind>``, else ``~/.cache/medzoo/<kind>``."""
    return Path(env("XDG_CACHE_HOME") or Path.home() / ".cache") / "medzoo" / kind


def kernel_cache_dir() -> Path:
    """Where compiled kernels are kept: ``MEDZOO_KERNEL_CACHE``, else :func:`user_cache_dir` ("kernels")."""
    folder = env("MEDZOO_KERNEL_CACHE")
    return Path(folder) if folder else user_cache_dir("kernels")


def model_cache_dir() -> Path:
    """Where packed ``.medzoo`` models are unpacked: ``MEDZOO_MODEL_CACHE``, else :func:`user_cache_dir`
    ("models")."""
    folder = env("MEDZOO_MODEL_CACHE")
    return Path(folder) if folder else user_cache_dir("models")


def fused_kernels() -> _kernels_module.CpuKernels | None:
    """medzoo's compiled CPU kernels, built and checked on first use; None when ``MEDZOO_FUSED_KERNELS=0`` or
    they cannot be had (then the layers run PyTorch's ops)."""
    if not env("MEDZOO_FUSED_KERNELS"):
        return None
    return _kernels_module.load(kernel_cache_dir(), env("CXX"))
