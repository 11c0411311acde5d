"""The check a freshly loaded kernel must pass before medzoo uses it: its forward and backward against
PyTorch's instance norm + leaky ReLU in float64, on a small map in both layouts, in fp32 and bf16."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# fp32: the kernel sums in double, PyTorch's float64 reference is exact to ~1e-15; bf16 stores 8 bits
_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 4e-2}


def _reference(x, weight, bias, eps, slope, grad):
    x = x.detach().double().requires_grad_()
    w = weight.detach().double().requires_grad_()
    b = bias.detach().double().requires_grad_()
    out = F.leaky_relu(F.instance_norm(x, weight=w, bias=b, eps=eps), slope)
    out.backward(grad.double())
    return out, x.grad, w.grad, b.grad


def check_instance_norm_act(kernel) -> None:
    """Raise ``RuntimeError`` unless ``kernel`` (a :class:`~medzoo.kernels.InstanceNormActKernel`) matches
    PyTorch on a (2, 5, 6, 7, 9) map, channels-first and channels-last, fp32 and bf16, with and without the
    activation (relative error of output, input gradient and parameter gradients)."""
    gen = torch.Generator().manual_seed(0)
    shape, eps = (2, 5, 6, 7, 9), 1e-5
    x = torch.randn(shape, generator=gen) * 3 + 1
    weight = torch.rand(shape[1], generator=gen) + 0.5
    bias = torch.randn(shape[1], generator=gen)
    grad = torch.randn(shape, generator=gen)
    for slope in (0.01, None):
        want = _reference(x, weight, bias, eps, 1.0 if slope is None else slope, grad)
        for dtype in (torch.float32, torch.bfloat16):
            for channels_last in (False, True):
                fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
                xs = x.to(dtype).contiguous(memory_format=fmt)
                gs = grad.to(dtype).contiguous(memory_format=fmt)
                out, dx = torch.empty_like(xs), torch.empty_like(xs)
                mean, invstd = torch.empty(shape[:2]), torch.empty(shape[:2])
                dw, db = torch.zeros(shape[1]), torch.zeros(shape[1])
                kernel.forward(xs, out, weight, bias, mean, invstd, eps, slope, channels_last, 2)
                kernel.backward(gs, xs, dx, weight, bias, mean, invstd, dw, db, slope, channels_last, 2)
                for name, got, ref in zip(("output", "input gradient", "weight gradient", "bias gradient"),
                                          (out, dx, dw, db), want):
                    err = ((got.double() - ref).abs().max() / ref.abs().max()).item()
                    if not err <= _TOLERANCE[dtype]:
                        raise RuntimeError(f"self-check failed: {name} off by {err:.2e} ({dtype}, "
                                           f"{'channels-last' if channels_last else 'channels-first'})")
