"""Concatenation along the channels, fast for channels-last maps on the CPU.

A U-Net decoder joins the upsampled map and the skip along the channels. In channels-last that is an
interleaving copy (each voxel's channels from one map, then the other's), which PyTorch's ``cat`` runs well
below what the memory traffic allows when maps have few channels. :func:`cat_channels` hands it to medzoo's
kernel (:mod:`medzoo.accel.kernels`) instead.

The kernel runs where no gradient is recorded (prediction, validation); training steps keep ``torch.cat`` and
its backward, where the kernel made no measurable difference. Everything else (the default layout, other
devices, mixed dtypes or layouts, export, tracing and ``torch.compile``, no kernel) runs ``torch.cat`` itself,
the reference the tests hold the kernel equal to, bit for bit.

Example:
    >>> x = cat_channels([up, skip])   # same values as torch.cat([up, skip], dim=1)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medzoo.accel.norm import recording_graph
from medzoo.runtime import fused_kernels

__all__ = ["cat_channels"]

_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def cat_channels(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(tensors, dim=1)``, by medzoo's kernel where it applies (see the module docstring).

    Shapes: each (B, C_i, *S) -> (B, sum C_i, *S); the result is channels-last when the kernel ran (all inputs
    channels-last), else whatever ``torch.cat`` gives.
    """
    kernel = _kernel_for(tensors)
    if kernel is None:
        return torch.cat(list(tensors), dim=1)
    return _concat(kernel, tensors)


def _kernel_for(tensors: Sequence[torch.Tensor]):
    """The kernel library when every tensor is a dense channels-last CPU map of one dtype and one batch and
    spatial size, and nothing records a graph (autograd, export, tracing, ``torch.compile``); else None."""
    if len(tensors) < 2 or recording_graph():
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return None
    first = tensors[0]
    layout = _CHANNELS_LAST.get(first.dim())
    if layout is None or first.device.type != "cpu":
        return None
    rest = (first.shape[0], *first.shape[2:])
    for t in tensors:
        if (t.device.type != "cpu" or t.dtype != first.dtype or t.dim() != first.dim()
                or (t.shape[0], *t.shape[2:]) != rest or not t.is_contiguous(memory_format=layout)):
            return None
    return fused_kernels()


def _concat(kernel, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    first = tensors[0]
    shape = (first.shape[0], sum(t.shape[1] for t in tensors), *first.shape[2:])
    out = torch.empty(shape, dtype=first.dtype, memory_format=_CHANNELS_LAST[first.dim()])
    kernel.concat_channels_last(tensors, out, torch.get_num_threads())
    return out
