"""medzoo.accel.norm: the instance norm (+ fused leaky ReLU) that keeps the memory layout.

Every test runs twice: with medzoo's fused CPU kernel (where it builds) and with PyTorch's ops (the fallback).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from medzoo.accel.norm import (
    GroupNorm,
    InstanceNorm2d,
    InstanceNorm3d,
    instance_norm_act,
    memory_format_of,
)
from medzoo.models.layers.factories import make_norm

CL3, CL2 = torch.channels_last_3d, torch.channels_last


@pytest.fixture(autouse=True, params=["fused kernel", "pytorch ops"])
def norm_path(request, monkeypatch):
    """Which implementation instance_norm_act takes (see the module docstring)."""
    monkeypatch.setenv("MEDZOO_FUSED_KERNELS", "1" if request.param == "fused kernel" else "0")
    if request.param == "fused kernel":
        from medzoo import runtime

        runtime.fused_kernels()  # built and checked now, not inside a test's recording of ops
    return request.param


def _reference(x, weight, bias, slope):
    y = nn.functional.instance_norm(x, weight=weight, bias=bias, eps=1e-5)
    return y if slope is None else nn.functional.leaky_relu(y, slope)


@pytest.mark.parametrize("shape, layout", [((1, 5, 6, 7, 4), CL3), ((3, 5, 6, 7, 4), CL3),
                                           ((3, 5, 6, 7, 4), torch.contiguous_format), ((2, 4, 9, 7), CL2)])
@pytest.mark.parametrize("slope, affine", [(0.01, True), (None, True), (-0.2, True), (0.01, False)])
def test_matches_instance_norm_forward_and_backward_in_each_layout(shape, layout, slope, affine):
    gen = torch.Generator().manual_seed(0)
    c = shape[1]
    w0, b0 = (torch.rand(c, generator=gen) + 0.5, torch.randn(c, generator=gen)) if affine else (None, None)
    x0 = (torch.randn(*shape, generator=gen) * 3 + 1).contiguous(memory_format=layout)
    g = torch.randn(*shape, generator=gen)

    def run(fn):
        x = x0.clone().requires_grad_(True)
        w = None if w0 is None else w0.clone().requires_grad_(True)
        b = None if b0 is None else b0.clone().requires_grad_(True)
        y = fn(x * 1.0, w, b, slope)
        (y * g).sum().backward()
        return y, [t.grad for t in (x, w, b) if t is not None]

    y, grads = run(lambda x, w, b, s: instance_norm_act(x, w, b, 1e-5, s))
    y_ref, grads_ref = run(_reference)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert memory_format_of(y) == memory_format_of(x0)  # the layout survives the norm
    assert y._base is None  # not a view: an in-place activation after it records no CopySlices


def test_bf16_input_keeps_dtype_and_layout():
    x = torch.randn(2, 8, 5, 6, 7).to(torch.bfloat16).contiguous(memory_format=CL3).requires_grad_(True)
    w, b = torch.ones(8, requires_grad=True), torch.zeros(8, requires_grad=True)
    y = instance_norm_act(x, w, b, 1e-5, 0.01)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=CL3)
    y.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.float32 and torch.isfinite(w.grad).all()
    ref = _reference(x.detach().float(), w.detach(), b.detach(), 0.01)
    torch.testing.assert_close(y.detach().float(), ref, atol=0.05, rtol=0.02)  # bf16 rounding only


def test_modules_are_drop_in_replacements():
    ours, theirs = InstanceNorm3d(6, affine=True), nn.InstanceNorm3d(6, affine=True)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 1.5)
        theirs.bias.normal_()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 6, 5, 4, 3)
    torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(ours(x[0]), theirs(x[0]))  # an unbatched input takes PyTorch's path
    tracked = InstanceNorm2d(3, affine=True, track_running_stats=True)
    tracked(torch.randn(2, 3, 8, 8) + 2.0)
    assert (tracked.running_mean > 0.1).all()  # running statistics: PyTorch's own path updates them
    act = nn.LeakyReLU(0.01, inplace=True)
    y = act(ours(x.requires_grad_(True)))
    assert type(y.grad_fn).__name__ != "CopySlices"
    y.sum().backward()  # the in-place activation after the norm leaves what its backward needs intact
    assert torch.isfinite(x.grad).all()
    cl = ours(x.detach().contiguous(memory_format=CL3))
    assert cl.is_contiguous(memory_format=CL3) and not cl.is_contiguous()  # batched inputs take the fast path


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # instance_norm's own size check, as in export
def test_a_traced_network_takes_any_batch_size():
    """torch.jit.trace (medzoo export --format torchscript) records the plain instance norm: traced at batch 1,
    the graph still normalises each sample of a larger batch on its own."""
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), InstanceNorm3d(4, affine=True), nn.LeakyReLU(0.01, True)).eval()
    with torch.no_grad():
        traced = torch.jit.trace(net, torch.randn(1, 1, 6, 5, 4), check_trace=False)
        x = torch.randn(3, 1, 6, 5, 4) * torch.tensor([1.0, 5.0, 0.2]).view(3, 1, 1, 1, 1)
        torch.testing.assert_close(traced(x), net(x), atol=1e-5, rtol=1e-5)


class _GroupNormInputs(TorchDispatchMode):
    """Records the memory layout of every input ``native_group_norm`` (forward) receives."""

    def __init__(self):
        super().__init__()
        self.layouts = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket is torch.ops.aten.native_group_norm:
            self.layouts.append(memory_format_of(args[0]))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("shape, layout", [((2, 8, 6, 7, 5), CL3), ((3, 6, 9, 7), CL2)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_group_norm_matches_pytorch_and_keeps_the_layout(shape, layout, dtype, norm_path):
    """Same values and gradients as nn.GroupNorm; the fused kernel keeps the layout; without it a channels-last
    bf16 map is normalised in the default layout (PyTorch's channels-last bf16 backward is the slow one) and
    comes back channels-last."""
    gen = torch.Generator().manual_seed(0)
    c = shape[1]
    ours, theirs = GroupNorm(2, c), nn.GroupNorm(2, c)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 1.5, generator=gen)
        theirs.bias.normal_(generator=gen)
    ours.load_state_dict(theirs.state_dict())
    x0 = (torch.randn(*shape, generator=gen) * 3 + 1).to(dtype).contiguous(memory_format=layout)
    g = torch.randn(*shape, generator=gen).to(dtype)

    def run(norm):
        norm.zero_grad()
        x = x0.clone().requires_grad_(True)
        with _GroupNormInputs() as seen:
            y = norm(x)
        (y.float() * g.float()).sum().backward()
        return y, [x.grad, norm.weight.grad, norm.bias.grad], seen.layouts

    y, grads, layouts = run(ours)
    y_ref, grads_ref, _ = run(theirs)
    assert y.dtype == dtype and memory_format_of(y) == layout
    if norm_path == "fused kernel":
        assert layouts == []  # PyTorch's group norm did not run
    else:
        assert layouts == [layout if dtype == torch.float32 else torch.contiguous_format]
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 0.05, "rtol": 0.02}
    torch.testing.assert_close(y.float(), y_ref.float(), **tol)
    for got, want in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got.float(), want.float(), **tol)
    assert isinstance(make_norm("group", len(shape) - 2, c), GroupNorm)


@pytest.mark.parametrize("act", ["leakyrelu", "relu"])
@pytest.mark.parametrize("layout", [CL3, torch.contiguous_format])
def test_conv_norm_act_fuses_norm_and_activation_with_the_same_values(act, layout):
    from medzoo.models.layers.factories import ConvNormAct

    torch.manual_seed(0)
    block = ConvNormAct(3, 2, 5, norm="instance", act=act).to(memory_format=layout)
    assert block._fused_slope() == (0.01 if act == "leakyrelu" else 0.0)
    x = torch.randn(2, 2, 7, 6, 5).contiguous(memory_format=layout)
    grad = torch.randn(2, 5, 7, 6, 5)
    results = []
    for fused in (True, False):
        block.zero_grad()
        xi = x.clone().requires_grad_(True)
        y = block(xi) if fused else nn.Sequential.forward(block, xi)  # the modules one by one
        y.backward(grad)
        results.append([y, xi.grad, block[0].weight.grad, block[1].weight.grad])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    if act == "relu":
        assert not torch.signbit(results[0][0]).any()  # zeros are +0, as ReLU's


def test_conv_norm_act_runs_the_modules_when_fusing_would_hide_something():
    from medzoo.models.layers.factories import ConvNormAct

    assert ConvNormAct(3, 2, 4, dropout=0.2)._fused_slope() is None  # dropout between norm and activation
    assert ConvNormAct(3, 2, 4, norm="batch")._fused_slope() is None
    assert ConvNormAct(3, 2, 4, act="prelu")._fused_slope() is None
    block = ConvNormAct(3, 2, 4)
    seen = []
    handle = block[2].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    assert block._fused_slope() is None
    block(torch.randn(1, 2, 5, 5, 5))
    assert seen == [torch.Size([1, 4, 5, 5, 5])]  # the hook on the activation fired
    handle.remove()
    assert block._fused_slope() == 0.01
    handle = block[1].register_full_backward_hook(lambda m, gi, go: None)
    assert block._fused_slope() is None  # a backward hook on the norm: the modules run one by one
    handle.remove()
    assert block(torch.randn(2, 5, 5, 5)).shape == (4, 5, 5, 5)  # unbatched input: the modules as they are


def test_fused_sequential_and_preact_block_match_running_the_modules_one_by_one():
    from medzoo.models.layers.blocks import PreActBlock
    from medzoo.models.layers.factories import FusedSequential

    torch.manual_seed(0)
    seq = FusedSequential(GroupNorm(2, 4), nn.ReLU(), nn.Conv3d(4, 4, 3, padding=1), InstanceNorm3d(4, affine=True),
                          nn.LeakyReLU(0.01, inplace=True), nn.Conv3d(4, 2, 1))
    block = PreActBlock(3, 4, "group", groups=2)
    x = torch.randn(2, 4, 6, 5, 7).contiguous(memory_format=CL3)
    for module, one_by_one in ((seq, lambda t: nn.Sequential.forward(seq, t)),
                               (block, lambda t: block.conv2(block.act2(block.norm2(block.conv1(block.act1(
                                   block.norm1(t)))))) + t)):
        results = []
        for fn in (module, one_by_one):
            module.zero_grad()
            xi = x.clone().requires_grad_(True)
            y = fn(xi)
            y.square().sum().backward()
            results.append([y, xi.grad] + [p.grad for p in module.parameters()])
        for got, want in zip(*results):
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert seq.state_dict().keys() == nn.Sequential(*seq).state_dict().keys()


@pytest.mark.parametrize("layout", [CL3, torch.contiguous_format])
@pytest.mark.parametrize("context", ["no_grad", "inference_mode"])
def test_overwrite_reuses_the_input_only_where_no_gradient_is_recorded(layout, context, norm_path):
    x = torch.randn(2, 5, 6, 7, 4).contiguous(memory_format=layout)
    w, b = torch.rand(5) + 0.5, torch.randn(5)
    want = _reference(x, w, b, 0.01)
    with {"no_grad": torch.no_grad(), "inference_mode": torch.inference_mode()}[context]:
        kept = x.clone()
        assert torch.equal(instance_norm_act(kept, w, b, 1e-5, 0.01), instance_norm_act(kept, w, b, 1e-5, 0.01))
        assert torch.equal(kept, x)  # without overwrite the input is left alone
        target = x.clone()
        y = instance_norm_act(target, w, b, 1e-5, 0.01, overwrite=True)
    torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)
    assert memory_format_of(y) == layout
    if norm_path == "fused kernel":
        assert y.data_ptr() == target.data_ptr()  # written into the input's memory
    xr = x.clone().requires_grad_(True)
    y = instance_norm_act(xr, w, b, 1e-5, 0.01, overwrite=True)  # a gradient is recorded: no overwriting
    assert torch.equal(xr.detach(), x) and y.data_ptr() != xr.data_ptr()
    y.sum().backward()
    assert torch.isfinite(xr.grad).all()


def test_only_a_hookless_convolutions_output_is_overwritable(norm_path):
    from medzoo.accel.norm import overwritable
    from medzoo.models.layers.factories import ConvNormAct

    conv = nn.Conv3d(2, 4, 3, padding=1)
    assert overwritable(conv) and not overwritable(nn.Identity()) and not overwritable(InstanceNorm3d(4))
    block = ConvNormAct(3, 2, 4).eval()
    x = torch.randn(1, 2, 5, 6, 7)
    with torch.no_grad():
        plain = block(x)
    kept = []
    handle = block[0].register_forward_hook(lambda m, i, o: kept.append((o, o.clone())))
    assert not overwritable(block[0])
    with torch.no_grad():
        hooked = block(x)
    handle.remove()
    (held, copy), = kept
    assert torch.equal(held, copy)  # what the hook holds was not overwritten by the norm
    torch.testing.assert_close(hooked, plain, atol=0, rtol=0)


@pytest.mark.parametrize("name, kwargs", [("unet3d", {"features": [4, 8, 16]}), ("dynunet", {"features": [4, 8, 16]}),
                                          ("segresnet", {"init_filters": 4}), ("resnetmed3d_10", {})])
def test_networks_predict_the_same_with_and_without_overwriting(name, kwargs, monkeypatch, norm_path):
    from medzoo.accel import norm
    from medzoo.models import create_model

    torch.manual_seed(0)
    net = create_model(name, in_channels=1, num_classes=3, spatial_dims=3, **kwargs).eval()
    net = net.to(memory_format=CL3)
    x = torch.randn(2, 1, 16, 16, 16).contiguous(memory_format=CL3)
    real, asked = norm._kernel_forward, []

    def recorded(*args, force=None):
        asked.append(args[-1])
        return real(*args[:-1], args[-1] if force is None else force)

    monkeypatch.setattr(norm, "_kernel_forward", recorded)
    with torch.inference_mode():
        fast = net(x)
    overwrites = sum(asked)
    monkeypatch.setattr(norm, "_kernel_forward", lambda *args: recorded(*args, force=False))
    with torch.inference_mode():
        slow = net(x)
    torch.testing.assert_close(fast, slow, atol=0, rtol=0)
    # conv -> norm -> act: unet3d, dynunet; segresnet normalises before its convolutions, resnetmed3d_10 has
    # batch norms (PyTorch's)
    assert (overwrites > 0) is (norm_path == "fused kernel" and name in ("unet3d", "dynunet"))
