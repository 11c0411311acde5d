"""Runtime knobs for CPU speed: thread counts and optional ``torch.compile``.

What was measured (``python -m benchmarks``; numbers in ``benchmarks/README.md``) decided the defaults:

* Threads: torch's intra-op pool should match the cores this process may use (``os.sched_getaffinity``), and
  the inter-op pool is kept small (1): U-Net training has no independent ops to overlap on CPU, and extra
  inter-op threads only compete with the data-loader workers.
* ``torch.compile`` is off by default. In PyTorch's default layout it made a hippocampus training step about
  1.08x faster after about 15 s of compiling, but the eager channels-last step (below) is faster than that,
  and compiling the channels-last step of nnU-Net's network gained nothing on hippocampus patches (0.98x, fp32
  and bf16) and 1.08-1.11x at 1x1x64^3, after 18-58 s of compiling, on the 2-core AMX CPU
  (``python -m benchmarks.training_step --compile`` measures it on yours). Switch it on with
  ``medzoo train --compile``, ``TrainConfig(compile=True)``, ``maybe_compile(model, True)`` or
  ``MEDZOO_COMPILE=1``.
* bf16 autocast: on a CPU with native bf16 instructions (AVX512-BF16 or AMX; :func:`cpu_has_native_bf16`)
  a 3D convolution runs about 1.9x (AVX512-BF16) to 2.5x (AMX) faster in bf16 than in fp32, and a whole U-Net
  training step 1.7-1.9x, so
  ``medzoo train`` autocasts to bf16 there by default (``--amp none`` keeps fp32). Where bf16 is emulated it is
  slower than fp32 and is not used.
* ``channels_last_3d``: on a CPU with AMX (Sapphire Rapids) oneDNN's 3D convolutions run 1.6-2.1x faster in
  bf16 and 1.2-2x in fp32 in the channels-last layout, and in the default layout PyTorch copies every bf16
  activation to that layout and back around each convolution. With an instance norm that keeps the layout
  (:func:`medzoo.models.layers.norm.instance_norm_act`), a hippocampus U-Net step is 1.30x faster in bf16 and
  1.18x in fp32, nnU-Net's network 1.5-1.6x in bf16; so ``medzoo train`` trains the networks whose card says so
  in channels-last on the CPU (:func:`preferred_memory_format`), and ``medzoo predict`` runs them so with
  the PyTorch backend. The group-norm networks (SegResNet, ResNet3D-VAE) do too since
  :class:`medzoo.models.layers.norm.GroupNorm` keeps their bf16 norm fast there (1.09-1.22x per step in
  bf16); the batch-norm ResNets, DeepLabv3+ and the V-Nets were slower in it and stay contiguous.
* glibc's malloc hands every large freed block straight back to the kernel (blocks over its mmap threshold,
  at most 32 MiB, are unmapped on free; the free top of the heap is trimmed), so each training step faults its
  activations in again, page by page, zeroed by the kernel: 0.4 M page faults per step of nnU-Net's network
  at 1x1x64^3, a quarter of the step's time. :func:`tune_malloc` (called by ``train``, ``predict`` and
  ``Predictor``) raises both thresholds so freed memory is reused: 1.3x faster steps there, 1.1x on
  hippocampus patches.
* In fp32 channels-last training, the few convolutions PyTorch runs on its own path instead of oneDNN (a
  batch of one on small maps) keep contiguous weights, which that path would copy on every call
  (:func:`keep_native_conv_weights_contiguous`, called by ``train``): 1.01-1.02x per step.

Example:
    >>> from medzoo.perf import configure_threads, maybe_compile
    >>> configure_threads()           # all available cores, 1 inter-op thread
    >>> model = maybe_compile(model)  # compiled only if MEDZOO_COMPILE=1
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

logger = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _env_flag(name: str, default: bool) -> bool:
    """A yes/no environment variable: ``default`` when unset or not a recognised yes/no word."""
    value = os.environ.get(name, "").strip().lower()
    return True if value in _TRUE else False if value in _FALSE else default


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


#: oneDNN ISA caps that keep bf16 dot products (``ONEDNN_MAX_CPU_ISA`` values from AVX512_CORE_BF16 up)
_BF16_ISA_MARKERS = ("BF16", "AMX", "FP16", "AVX10", "ALL", "DEFAULT")


def _onednn_isa_allows_bf16() -> bool:
    """False when the environment caps oneDNN below AVX512_CORE_BF16 (e.g. ``ONEDNN_MAX_CPU_ISA=AVX2``)."""
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        cap = os.environ.get(name, "").strip().upper()
        if cap:
            return any(marker in cap for marker in _BF16_ISA_MARKERS)
    return True


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 dot-product instructions (x86 AVX512-BF16 or AMX tiles).

    There oneDNN's bf16 convolutions run about twice as fast as fp32 ones (measured: a 32->32 3x3x3 conv on
    64^3, 205 -> 385 GFLOP/s on 2 cores). Elsewhere torch emulates bf16 and it is slower than fp32. An
    ``ONEDNN_MAX_CPU_ISA`` (or ``DNNL_MAX_CPU_ISA``) below ``AVX512_CORE_BF16`` forbids oneDNN those
    instructions, so it counts as no.
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
    """Autocast dtype on a CUDA GPU for an ``amp`` mode ("auto", "bf16", "fp16", "none"; None means fp32).

    "auto": bf16 where the GPU supports it (Ampere and later: fp32's range, no loss scaling needed), else fp16.
    """
    if amp == "none":
        return None
    if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


# oneDNN's bf16 convolution backward (torch 2.13, AVX512-BF16) now and then returns NaN weight gradients when
# the input is tiny (seen at 2x2x2 and 2x3x2 voxels, never at 27 or more in 150 tries each): such networks train
# in fp32 on the CPU.
BF16_MIN_CONV_VOXELS = 64
# bf16 pays where convolutions are wide: a dynunet training step on 2 cores was 1.04x / 1.13x faster in bf16
# with 4 / 8 first-stage channels, 1.6-1.8x with 16 to 32.
BF16_MIN_CONV_WIDTH = 16


def _meta_forward(model: nn.Module, input_shape: Sequence[int]) -> None:
    """One forward pass of ``model`` on the meta device (shapes only: no arithmetic, no weight touched), for
    its hooks to see; raises what the model raises where it needs real values."""
    state = {name: torch.empty_like(t, device="meta") for name, t in [*model.named_parameters(), *model.named_buffers()]}
    torch.func.functional_call(model, state, (torch.empty(tuple(input_shape), device="meta"),))


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


@torch.no_grad()
def conv_census(model: nn.Module, input_shape: Sequence[int], device: torch.device | str = "cpu") -> ConvCensus:
    """:class:`ConvCensus` of ``model`` for an eval-mode forward pass of an input shaped ``input_shape``
    (B, C, *S). 1x1 convolutions (e.g. heads, or after a global pooling) are left out: their bf16 backward was
    exact on 2x2x2 inputs in 100 tries.

    The pass runs on the meta device (shapes only, no arithmetic, no weight touched); a model that cannot run
    there is run for real on ``device`` with zeros.
    """
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


# PyTorch 2.13 (``ConvParams::use_mkldnn`` in aten/src/ATen/native/Convolution.cpp) runs an fp32 CPU convolution
# on its own im2col path instead of oneDNN when it has one group, kernels of at most 3 in one of its last two
# axes, a batch of one and N * C * D * H (the first four sizes of the input) of at most this many:
_NATIVE_CONV_MAX_SIZE = 20480
_CONVS = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def takes_native_conv_path(conv: nn.Module, input_shape: Sequence[int]) -> bool:
    """Whether PyTorch runs ``conv`` (2D/3D, plain or transposed) in fp32 on the CPU with its own im2col
    path rather than oneDNN, for an input shaped ``input_shape`` (see ``_NATIVE_CONV_MAX_SIZE``)."""
    if not isinstance(conv, _CONVS) or len(input_shape) != conv.weight.dim():
        return False
    kh, kw = conv.kernel_size[-2:]
    n = input_shape[0]
    plain_1x1 = (all(s == 1 for s in conv.stride) and all(d == 1 for d in conv.dilation) and n < 16
                 and kh == 1 and kw == 1 and torch.get_num_threads() == 1)
    onednn_by_size = (conv.groups > 1 or (kh > 3 and kw > 3) or n > 1
                      or math.prod(input_shape[:4]) > _NATIVE_CONV_MAX_SIZE)
    return plain_1x1 or not onednn_by_size


@torch.no_grad()
def keep_native_conv_weights_contiguous(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Give the weights of the convolutions that PyTorch runs on its own fp32 path (a batch of one, small
    maps: :func:`takes_native_conv_path`) back the default layout, in a network laid out channels-last.

    That path wants contiguous weights and copies channels-last ones on every call, forward and backward;
    oneDNN, which runs the others, is faster with channels-last ones. nnU-Net's network, fp32 training step
    at 1x1x64^3 on 2 cores: 1.04x with every convolution's weights contiguous, against 0.98-0.99x on steps
    where every convolution runs on oneDNN, hence only these. Call it before the optimizer's first step and
    before wrapping the model in DDP (which keeps views of the parameters); shapes come from one forward pass
    on the meta device (no arithmetic). Returns how many convolutions changed (0 if the pass cannot run there).

    Args:
        model: the network, already channels-last.
        input_shape: (B, C, *S) of a training batch.
    """
    convs = [m for m in model.modules() if isinstance(m, _CONVS) and not m.weight.is_contiguous()]
    if not convs or torch.device(convs[0].weight.device).type != "cpu":
        return 0
    shapes: dict[nn.Module, list[tuple[int, ...]]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args: shapes.setdefault(mod, []).append(tuple(args[0].shape)))
             for m in convs]
    try:
        _meta_forward(model, input_shape)
    except Exception as err:  # noqa: BLE001 - e.g. a data-dependent branch: leave the layout as it is
        logger.debug("no meta pass (%s): conv weights left channels-last", err)
        return 0
    finally:
        for hook in hooks:
            hook.remove()
    changed = 0
    for conv in convs:
        calls = shapes.get(conv, [])
        if calls and all(takes_native_conv_path(conv, shape) for shape in calls):
            conv.weight.data = conv.weight.data.contiguous()
            changed += 1
    return changed


def compile_requested(compile: bool | None = None) -> bool:
    """Whether to compile: the explicit argument if given, else the ``MEDZOO_COMPILE`` environment variable."""
    if compile is not None:
        return bool(compile)
    return _env_flag("MEDZOO_COMPILE", False)


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


# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# freed blocks below 256 MiB are kept for reuse; larger ones (volume-sized arrays) go back to the kernel
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


def tune_malloc(enable: bool | None = None) -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of returning it to the kernel at once.

    PyTorch's CPU tensors come from malloc. With glibc's defaults a freed activation larger than the mmap
    threshold (dynamic, at most 32 MiB) is unmapped, and the free top of the heap is trimmed, so the next
    step page-faults the same memory back in. This raises the mmap threshold to 256 MiB and the trim
    threshold to 2 GiB. Blocks below 256 MiB (a network's activations: at most 64 MiB in nnU-Net's 64^3
    step, 226 MB for a batch of four 96^3 windows of the phantom's U-Net) are reused; volume-sized arrays at
    or above it (a 512^3 float32 scan is 512 MiB) still come from and go back to the kernel, so
    preprocessing a large scan leaves no freed copies resident (with a 1 GiB threshold, predicting a 512^3
    scan peaked at 2297 MB instead of 1929 MB; step and prediction times were the same with either).
    Process-wide and permanent: the process keeps up to its peak memory mapped (call
    :func:`release_memory` to give the unused part back). ``train``, ``predict`` and building a
    :class:`~medzoo.inference.predictor.Predictor` call it; turn it off with ``enable=False`` or
    ``MEDZOO_TUNE_MALLOC=0``.

    Returns:
        True if the setting is in effect (now or from an earlier call), False if off or not on glibc.
    """
    global _malloc_tuned
    if enable is None:
        enable = _env_flag("MEDZOO_TUNE_MALLOC", True)
    if not enable:
        return False
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


def preferred_memory_format(setting: str, model_name: str, spatial_dims: int, device: torch.device | str
                            ) -> torch.memory_format | None:
    """Memory layout to train or predict in (None: PyTorch's default, contiguous).

    Args:
        setting: "channels_last", "contiguous" or "auto" (channels-last on the CPU when the model's card
            says it trains faster so, ``ModelCard.channels_last``; contiguous on GPUs, not measured there).
            The same cards hold for prediction: in a one-off fp32 timing of the forward pass (batch 4 of
            64^3) those networks gained 1.08-1.79x in channels-last (V-Net 0.90x, HyperDenseNet 0.98x, both
            contiguous); ``python -m benchmarks.backends`` times whole predictions.
        model_name: registry name of the network.
        spatial_dims: 2 (``torch.channels_last``) or 3 (``torch.channels_last_3d``); other dims: None.
        device: where it trains or predicts.
    """
    from medzoo.errors import ModelError
    from medzoo.models.registry import get_card

    if setting == "contiguous" or spatial_dims not in (2, 3):
        return None
    if setting == "auto":
        try:
            wanted = get_card(model_name).channels_last
        except ModelError:  # a model outside the registry: no card, no claim
            wanted = False
        if not wanted or torch.device(device).type != "cpu":
            return None
    return torch.channels_last_3d if spatial_dims == 3 else torch.channels_last


def release_memory() -> None:
    """Give free heap memory back to the kernel (``malloc_trim(0)``; a no-op off glibc)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
