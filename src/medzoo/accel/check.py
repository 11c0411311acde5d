"""The checks a freshly built kernel library must pass before medzoo uses it: the norm's forward and
backward against PyTorch's group norm + leaky ReLU in float64, on a small map in both layouts, in fp32 and
bf16, as an instance norm (one channel per group) and as a group norm (two channels per group); the
channels-last concatenation against ``torch.cat``, bit for bit, for 4-, 2- and 1-byte values."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# fp32: the kernel sums in double, the float64 reference is exact to ~1e-15; bf16 rounds the outputs to 8 bits
_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 1e-2}


def _reference(x, groups, weight, bias, eps, slope, grad):
    x = x.detach().double().requires_grad_()
    w = weight.detach().double().requires_grad_()
    b = bias.detach().double().requires_grad_()
    out = F.leaky_relu(F.group_norm(x, groups, w, b, eps), slope)
    out.backward(grad.double())
    return out, x.grad, w.grad, b.grad


def check_kernels(kernel) -> None:
    """Raise ``RuntimeError`` unless every kernel of the library passes its check (see the module docstring)."""
    check_norm_act(kernel)
    check_concat(kernel)


def check_concat(kernel) -> None:
    """Raise ``RuntimeError`` unless the channels-last concatenation equals ``torch.cat`` exactly, for maps of
    5, 8 and 3 channels (odd row lengths and one of the unrolled ones), 2 and 3 inputs, in fp32, bf16 and
    uint8 (4-, 2- and 1-byte copies)."""
    gen = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.bfloat16, torch.uint8):
        parts = [(torch.randn(2, c, 5, 7, 9, generator=gen) * 50).to(dtype).contiguous(
            memory_format=torch.channels_last_3d) for c in (5, 8, 3)]
        for inputs in (parts[:2], parts):
            want = torch.cat(inputs, dim=1)
            out = torch.empty_like(want, memory_format=torch.channels_last_3d)
            kernel.concat_channels_last(inputs, out, 2)
            if not torch.equal(out, want):
                raise RuntimeError(f"self-check failed: concatenation of {len(inputs)} {dtype} maps differs")


def check_norm_act(kernel) -> None:
    """Raise ``RuntimeError`` unless ``kernel`` (a :class:`~medzoo.accel.kernels.CpuKernels`) matches PyTorch on a
    (2, 6, 5, 7, 9) map, channels-first and channels-last, fp32 and bf16, 6 and 3 groups, with and without
    the activation (relative error of output, input gradient and parameter gradients).

    Runs the same under ``torch.no_grad``, ``torch.inference_mode`` or autocast (the kernel is first loaded
    inside whatever forward pass needs it first)."""
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast("cpu", enabled=False):
        _check_all(kernel)


def _check_all(kernel) -> None:
    gen = torch.Generator().manual_seed(0)
    shape, eps = (2, 6, 5, 7, 9), 1e-5
    x = torch.randn(shape, generator=gen) * 3 + 1
    weight = torch.rand(shape[1], generator=gen) + 0.5
    bias = torch.randn(shape[1], generator=gen)
    grad = torch.randn(shape, generator=gen)
    for groups in (shape[1], shape[1] // 2):
        for slope in (0.01, None):
            for dtype in (torch.float32, torch.bfloat16):
                xd, gd = x.to(dtype), grad.to(dtype)  # the reference sees the same (rounded) inputs
                want = _reference(xd, groups, weight, bias, eps, 1.0 if slope is None else slope, gd)
                for channels_last in (False, True):
                    _check_one(kernel, xd, gd, weight, bias, want, groups, eps, slope, dtype, channels_last)


def _check_one(kernel, x, grad, weight, bias, want, groups, eps, slope, dtype, channels_last) -> None:
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    xs = x.contiguous(memory_format=fmt)
    gs = grad.contiguous(memory_format=fmt)
    out, dx = torch.empty_like(xs), torch.empty_like(xs)
    mean, invstd = torch.empty(x.shape[0], groups), torch.empty(x.shape[0], groups)
    dw, db = torch.zeros(x.shape[1]), torch.zeros(x.shape[1])
    kernel.norm_forward(xs, out, weight, bias, mean, invstd, eps, slope, channels_last, 2, groups)
    kernel.norm_backward(gs, xs, dx, weight, bias, mean, invstd, dw, db, slope, channels_last, 2, groups)
    for name, got, ref in zip(("output", "input gradient", "weight gradient", "bias gradient"),
                              (out, dx, dw, db), want):
        err = ((got.double() - ref).abs().max() / ref.abs().max()).item()
        if not err <= _TOLERANCE[dtype]:
            raise RuntimeError(f"self-check failed: {name} off by {err:.2e} ({dtype}, {groups} groups, "
                               f"{'channels-last' if channels_last else 'channels-first'})")
