"""Instance and group normalisation that keep either memory layout on the CPU, fused with the (leaky) ReLU
that follows them; the layer factories (:mod:`medzoo.models.layers`) hand these to every network.

PyTorch's ``instance_norm`` runs one batch norm over the ``(1, B*C, *S)`` view of its input and returns a view
of that. Two things make that slow in training on the CPU:

* an in-place activation on that view makes autograd record a ``CopySlices`` node, which copies the whole
  feature map again in the backward pass;
* a ``channels_last_3d`` input cannot be viewed as ``(1, B*C, *S)``, so it is copied to the default layout and
  back; channels-last is what makes oneDNN's convolutions fast, so the norm between them must not undo it.

On CPU fp32/bf16 maps, :func:`instance_norm_act` runs medzoo's fused kernel (:mod:`medzoo.accel.kernels`, when
:func:`medzoo.runtime.fused_kernels` has one): one pass for the statistics and one to normalise and activate,
in either layout, into an output that keeps the input's layout; its backward recomputes the activation's mask
from the saved input. Without the kernel it avoids the two problems with PyTorch's ops: a batch of one is a
batch norm as it is (any layout); a larger batch runs one batch norm per sample, each writing its slice of one
output; the leaky ReLU is applied in place to that output. On other devices it runs the plain batch norm.
The readable reference of all of it is ``leaky_relu(instance_norm(x))``, what export and ``torch.compile``
record; the tests hold every path equal to it.

:class:`GroupNorm` is ``nn.GroupNorm`` that runs the same fused kernel (group norm is its general case). Without
the kernel, a reduced-precision channels-last CPU input is normalised in the default layout and returned in
channels-last, since PyTorch's channels-last low-precision group norm is much slower than its default-layout
one (``python -m benchmarks.layouts``); fp32 keeps PyTorch's path.

:func:`norm_act` runs ``act(norm(x))`` as one fused op where the norm is one of these and the activation a
``nn.ReLU`` or ``nn.LeakyReLU`` (no hooks on either); ``ConvNormAct``, ``FusedSequential`` and the residual
blocks call it.

Example:
    >>> y = instance_norm_act(x, norm.weight, norm.bias, 1e-5, 0.01)   # == leaky_relu(instance_norm(x))
    >>> norm = InstanceNorm3d(32, affine=True)                          # drop-in for nn.InstanceNorm3d
    >>> y = norm_act(GroupNorm(8, 32), nn.ReLU(), x)                    # == relu(group_norm(x)), fused
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from medzoo.runtime import fused_kernels

__all__ = [
    "GroupNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "fused_activation_slope", "instance_norm_act",
    "fused_norm_act", "memory_format_of", "norm_act", "overwritable", "recording_graph",
]


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """``channels_last_3d`` / ``channels_last`` when ``x`` is laid out so (and not also plainly contiguous),
    else ``contiguous_format``."""
    if x.is_contiguous():
        return torch.contiguous_format
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _leaky_relu_(x: torch.Tensor, slope: float) -> torch.Tensor:
    """In-place leaky ReLU; slope 0 is a ReLU (zeros stay +0, where ``leaky_relu_`` would give -0)."""
    return F.relu_(x) if slope == 0 else F.leaky_relu_(x, slope)


class _PerSampleInstanceNorm(torch.autograd.Function):
    """Instance norm of a (B, C, *S) CPU tensor as B batch norms of (1, C, *S), in place into one output
    that keeps the input's memory layout; optionally a leaky ReLU (slope >= 0) in place on the result."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float, slope: float | None):  # noqa: D102 - see the class
        x = x.contiguous(memory_format=memory_format_of(x))
        out = torch.empty_like(x)
        channels = x.shape[1]
        means = torch.empty((x.shape[0], channels), dtype=torch.float32)
        invstds = torch.empty_like(means)
        for i in range(x.shape[0]):
            torch.ops.aten.native_batch_norm.out(
                x[i:i + 1], weight, bias, None, None, True, 0.0, eps,
                out=out[i:i + 1], save_mean=means[i], save_invstd=invstds[i],
            )  # fmt: skip
        if slope is not None:
            _leaky_relu_(out, slope)
        # the output is needed only to undo the fused activation; unsaved, a later in-place op may change it
        ctx.save_for_backward(x, weight, out if slope is not None else None, means, invstds)
        ctx.eps, ctx.slope = eps, slope
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # noqa: D102 - see the class
        x, weight, out, means, invstds = ctx.saved_tensors
        if ctx.slope is not None:
            grad = torch.ops.aten.leaky_relu_backward(grad, out, ctx.slope, True)
        grad = grad.contiguous(memory_format=memory_format_of(x))
        want_x, want_w, want_b = ctx.needs_input_grad[:3]
        dx = torch.empty_like(x) if want_x else None
        dw = torch.zeros_like(weight) if want_w and weight is not None else None
        db = torch.zeros_like(weight) if want_b and weight is not None else None
        mask = [want_x, dw is not None, db is not None]
        for i in range(x.shape[0]):
            gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
                grad[i:i + 1], x[i:i + 1], weight, None, None, means[i], invstds[i], True, ctx.eps, mask,
            )  # fmt: skip
            if dx is not None:
                dx[i:i + 1].copy_(gx)
            if dw is not None:
                dw += gw
            if db is not None:
                db += gb
        return dx, dw, db, None, None


class _FusedNormAct(torch.autograd.Function):
    """Group norm (``groups == C``: instance norm), optionally followed by a leaky ReLU, of a (B, C, *S) CPU
    tensor by :mod:`medzoo.accel.kernels`: the output keeps the input's layout; the backward recomputes the
    activation's mask from the saved input."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps: float, slope: float | None, kernel, groups: int):  # noqa: D102
        out, x, mean, invstd, w32, b32 = _kernel_forward(x, weight, bias, eps, slope, kernel, groups, False)
        ctx.save_for_backward(x, mean, invstd, w32, b32)  # saved: an in-place change before backward is an error
        ctx.param_dtypes = (None if weight is None else weight.dtype, None if bias is None else bias.dtype)
        ctx.slope, ctx.kernel, ctx.layout, ctx.groups = slope, kernel, memory_format_of(x), groups
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # noqa: D102 - see the class
        x, mean, invstd, w32, b32 = ctx.saved_tensors
        w_dtype, b_dtype = ctx.param_dtypes
        grad = grad.to(x.dtype).contiguous(memory_format=ctx.layout)
        want_x, want_w, want_b = ctx.needs_input_grad[:3]
        dx = torch.empty_like(x) if want_x else None
        dw = torch.zeros(x.shape[1], dtype=torch.float32) if want_w else None
        db = torch.zeros(x.shape[1], dtype=torch.float32) if want_b else None
        ctx.kernel.norm_backward(grad, x, dx, w32, b32, mean, invstd, dw, db, ctx.slope,
                                 ctx.layout is not torch.contiguous_format, torch.get_num_threads(), ctx.groups)
        return (dx, None if dw is None else dw.to(w_dtype), None if db is None else db.to(b_dtype),
                None, None, None, None)


def _kernel_forward(x, weight, bias, eps: float, slope: float | None, kernel, groups: int, overwrite: bool):
    """The kernel's forward of ``x`` in its own layout: (out, x as read, mean, invstd, fp32 weight and bias);
    ``out`` is ``x`` itself when ``overwrite`` (the kernel works element by element, so it may)."""
    layout = memory_format_of(x)
    x = x.contiguous(memory_format=layout)
    w32 = None if weight is None else weight.detach().float().contiguous()
    b32 = None if bias is None else bias.detach().float().contiguous()
    out = x if overwrite else torch.empty_like(x)
    mean = torch.empty((x.shape[0], groups), dtype=torch.float32)
    invstd = torch.empty_like(mean)
    kernel.norm_forward(x, out, w32, b32, mean, invstd, eps, slope, layout is not torch.contiguous_format,
                        torch.get_num_threads(), groups)
    return out, x, mean, invstd, w32, b32


def _fused_norm_act(x, weight, bias, eps: float, slope: float | None, kernel, groups: int,
                    overwrite: bool = False) -> torch.Tensor:
    """The kernel's norm + activation; where no gradient is recorded, without autograd, and into ``x``
    itself when ``overwrite`` (one buffer fewer per layer in prediction)."""
    if not torch.is_grad_enabled():
        return _kernel_forward(x, weight, bias, eps, slope, kernel, groups, overwrite)[0]
    return _FusedNormAct.apply(x, weight, bias, eps, slope, kernel, groups)


def overwritable(module: nn.Module) -> bool:
    """Whether ``module``'s output is a fresh map that only its caller holds, so that a norm may overwrite it
    where no gradient is recorded: a convolution without forward hooks (a hook might keep the output)."""
    return (isinstance(module, nn.modules.conv._ConvNd) and not module._forward_hooks
            and not nn.modules.module._global_forward_hooks)


def exporting() -> bool:
    """Whether an ONNX export, ``torch.jit.trace`` or TorchScript scripting is running (plain ops only)."""
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.jit.is_scripting()


def recording_graph() -> bool:
    """Whether a graph of plain ops is being recorded, where medzoo's kernels must not run: :func:`exporting`,
    or ``torch.compile`` (whose compiler fuses the plain ops itself; testing its flag, unlike decorating with
    ``torch.compiler.disable``, does not import ``torch._dynamo``, which is slow to import)."""
    return exporting() or torch.compiler.is_compiling()


def _fused_kernel(x: torch.Tensor):
    """The fused kernel when it applies to ``x`` (a CPU fp32/bf16 map with more than one spatial element,
    outside export, tracing and ``torch.compile``), else None."""
    if (x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16) or x.dim() < 3
            or x.numel() == 0 or x[0, 0].numel() < 2 or recording_graph()):
        return None
    return fused_kernels()


def instance_norm_act(
    x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float = 1e-5,
    negative_slope: float | None = 0.01, overwrite: bool = False,
) -> torch.Tensor:
    """Instance norm (affine when ``weight``/``bias`` are given), then an in-place leaky ReLU.

    Same values as ``LeakyReLU(negative_slope, inplace=True)(InstanceNorm(affine=True)(x))``; see the module
    docstring for why it is faster. The result is never a view and keeps ``x``'s memory layout on the CPU.
    Under ONNX export, ``torch.jit.trace`` and ``torch.compile`` the plain ``instance_norm`` + ``leaky_relu``
    ops are recorded instead, so the graph takes any batch size (the fast paths depend on it).

    Shapes: (B, C, *S) -> (B, C, *S). ``negative_slope=None`` skips the activation. ``overwrite``: ``x`` may
    hold the result where no gradient is recorded (a fresh map nobody else holds, e.g. a convolution's
    output; see :func:`overwritable`).
    """
    if recording_graph():  # a graph that takes any batch size
        y = F.instance_norm(x, weight=weight, bias=bias, eps=eps)
        return y if negative_slope is None else F.leaky_relu(y, negative_slope)
    kernel = _fused_kernel(x)
    if kernel is not None:
        return _fused_norm_act(x, weight, bias, eps, negative_slope, kernel, x.shape[1], overwrite)
    b, c = x.shape[:2]
    fused = negative_slope is None or negative_slope >= 0  # in place needs a slope that keeps the sign
    if b > 1 and x.device.type == "cpu":
        y = _PerSampleInstanceNorm.apply(x, weight, bias, eps, negative_slope if fused else None)
        return y if fused else F.leaky_relu(y, negative_slope)
    if b == 1:  # a batch norm of one sample is its instance norm, in any layout
        y = F.batch_norm(x, None, None, weight, bias, True, 0.0, eps)
    else:
        w = None if weight is None else weight.repeat(b)
        bb = None if bias is None else bias.repeat(b)
        y = F.batch_norm(x.reshape(1, b * c, *x.shape[2:]), None, None, w, bb, True, 0.0, eps)
    if negative_slope is not None:
        y = _leaky_relu_(y, negative_slope) if fused else F.leaky_relu(y, negative_slope)
    return y if b == 1 else y.view(x.shape)


class _FastInstanceNorm:
    """Forward of :class:`InstanceNorm3d` and its 1D/2D siblings (a mixin over ``nn.InstanceNormNd``)."""

    def _norm_act(self, x: torch.Tensor, slope: float | None, overwrite: bool = False) -> torch.Tensor | None:
        """The norm (then a leaky ReLU of ``slope``) by :func:`instance_norm_act`; None where PyTorch's own
        path is needed (running statistics, or an unbatched input)."""
        if self.track_running_stats or x.dim() != self._get_no_batch_dim() + 1:
            return None
        self._check_input_dim(x)
        return instance_norm_act(x, self.weight, self.bias, self.eps, slope, overwrite)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._norm_act(x, None)
        return super().forward(x) if y is None else y


class InstanceNorm1d(_FastInstanceNorm, nn.InstanceNorm1d):
    """``nn.InstanceNorm1d`` computed by :func:`instance_norm_act` (same parameters and state dict)."""


class InstanceNorm2d(_FastInstanceNorm, nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` computed by :func:`instance_norm_act` (same parameters and state dict)."""


class InstanceNorm3d(_FastInstanceNorm, nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` computed by :func:`instance_norm_act` (same parameters and state dict)."""


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters and state dict) that is fast on the CPU in both layouts.

    On CPU fp32/bf16 maps it runs medzoo's fused kernel (:mod:`medzoo.accel.kernels`; the output keeps the input's
    layout). Without the kernel, a CPU input that is ``channels_last``/``channels_last_3d`` (and not also
    plainly contiguous) in a reduced precision is normalised in the default layout and returned in its own
    layout; everything else runs PyTorch's ``group_norm`` as it is. See the module docstring for why.

    Shapes: (B, C, *S) -> (B, C, *S), the input's memory layout kept.
    """

    def _norm_act(self, x: torch.Tensor, slope: float | None, overwrite: bool = False) -> torch.Tensor | None:
        """The norm (then a leaky ReLU of ``slope``) by the fused kernel; None where it does not apply."""
        kernel = _fused_kernel(x)
        return None if kernel is None else _fused_norm_act(x, self.weight, self.bias, self.eps, slope, kernel,
                                                           self.num_groups, overwrite)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 - see the class
        y = self._norm_act(x, None)
        if y is not None:
            return y
        layout = memory_format_of(x)
        if layout is torch.contiguous_format or x.device.type != "cpu" or x.dtype == torch.float32 or exporting():
            return super().forward(x)
        y = F.group_norm(x.contiguous(), self.num_groups, self.weight, self.bias, self.eps)
        return y.contiguous(memory_format=layout)


_INSTANCE_NORMS = (InstanceNorm1d, InstanceNorm2d, InstanceNorm3d)


def fused_activation_slope(norm: nn.Module, act: nn.Module) -> float | None:
    """The negative slope with which ``act(norm(x))`` can run as one fused op (:func:`norm_act`), or None.

    Fusable: medzoo's :class:`InstanceNorm3d` (and 1d/2d; without running statistics) or :class:`GroupNorm`,
    followed by ``nn.LeakyReLU`` or ``nn.ReLU`` (slope 0), with no forward or backward hooks on either
    module or registered globally (fusing would skip them).
    """
    if type(norm) in _INSTANCE_NORMS:
        if norm.track_running_stats:
            return None
    elif type(norm) is not GroupNorm:
        return None
    if type(act) is nn.LeakyReLU:
        slope = float(act.negative_slope)
    elif type(act) is nn.ReLU:
        slope = 0.0
    else:
        return None
    hooked = any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
                 for m in (norm, act))
    hooked = hooked or any((nn.modules.module._global_forward_hooks, nn.modules.module._global_forward_pre_hooks,
                            nn.modules.module._global_backward_hooks, nn.modules.module._global_backward_pre_hooks))
    return None if hooked else slope


def norm_act(norm: nn.Module, act: nn.Module, x: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
    """``act(norm(x))``, as one fused op where :func:`fused_activation_slope` allows (same values; the input
    is left as it is, so it may still be used, e.g. by a residual path, unless ``overwrite``: then the fused
    op may write its result into ``x`` where no gradient is recorded, see :func:`overwritable`).

    Shapes: (B, C, *S) -> (B, C, *S).
    """
    return fused_norm_act(norm, act, x, fused_activation_slope(norm, act), overwrite)


def fused_norm_act(norm: nn.Module, act: nn.Module, x: torch.Tensor, slope: float | None,
                   overwrite: bool = False) -> torch.Tensor:
    """:func:`norm_act` with ``slope = fused_activation_slope(norm, act)`` already known (None: the modules
    as they are), for callers that tested it first."""
    y = None if slope is None else norm._norm_act(x, slope, overwrite)  # None: the modules as they are
    return act(norm(x)) if y is None else y
