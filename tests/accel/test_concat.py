"""medzoo.accel.concat: channel concatenation by medzoo's kernel for channels-last CPU maps, and
torch.cat everywhere else."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from medzoo import runtime
from medzoo.accel import concat
from medzoo.accel.concat import cat_channels
from medzoo.models import create_model

CL3, CL2 = torch.channels_last_3d, torch.channels_last
needs_kernel = pytest.mark.skipif(runtime.fused_kernels() is None, reason="medzoo's CPU kernels are unavailable here")


class _Ops(TorchDispatchMode):
    """Records the aten ops that run."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _maps(channels, spatial, layout, dtype=torch.float32, batch=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, c, *spatial, generator=gen) * 10).to(dtype).contiguous(memory_format=layout)
            for c in channels]


@needs_kernel
@pytest.mark.parametrize("channels", [(8, 8), (5, 3), (1, 7, 2), (16, 32), (33, 64)])
@pytest.mark.parametrize("spatial, layout", [((5, 6, 7), CL3), ((9, 11), CL2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64, torch.uint8])
@pytest.mark.parametrize("batch", [1, 3])
def test_equals_torch_cat_exactly_and_stays_channels_last(channels, spatial, layout, dtype, batch):
    tensors = _maps(channels, spatial, layout, dtype, batch)
    with _Ops() as seen:
        got = cat_channels(tensors)
    assert "cat" not in seen.ops  # the kernel ran, not torch.cat
    assert torch.equal(got, torch.cat(tensors, dim=1))
    assert got.is_contiguous(memory_format=layout) and got.dtype == dtype


def test_a_graph_for_autograd_gets_torch_cat_and_its_gradients():
    tensors = [t.requires_grad_(i != 1) for i, t in enumerate(_maps((3, 4, 2), (4, 5, 3), CL3, torch.float64))]
    with _Ops() as seen:
        out = cat_channels(tensors)
    assert "cat" in seen.ops
    grad = torch.randn_like(out)
    out.backward(grad)
    assert tensors[1].grad is None
    torch.testing.assert_close(tensors[0].grad, grad[:, :3], rtol=0, atol=0)
    torch.testing.assert_close(tensors[2].grad, grad[:, 7:], rtol=0, atol=0)
    with torch.no_grad(), _Ops() as seen:
        assert torch.equal(cat_channels(tensors), out.detach())
    assert "cat" not in seen.ops or runtime.fused_kernels() is None


@pytest.mark.parametrize("case", ["default layout", "mixed layouts", "mixed dtypes", "one map", "1d maps",
                                  "different sizes", "kernels off"])
def test_everything_else_is_torch_cat(case, monkeypatch):
    a, b = _maps((3, 4), (4, 5, 6), CL3)
    tensors = {
        "default layout": [a.contiguous(), b.contiguous()],
        "mixed layouts": [a, b.contiguous()],
        "mixed dtypes": [a, b.double()],
        "one map": [a],
        "1d maps": [torch.randn(2, 3, 7), torch.randn(2, 4, 7)],
        "different sizes": [a, b[:, :, :3]],
        "kernels off": [a, b],
    }[case]
    if case == "kernels off":
        monkeypatch.setenv("MEDZOO_FUSED_KERNELS", "0")
    if case == "mixed dtypes":
        want = torch.cat(tensors, dim=1)  # torch.cat promotes
    elif case == "different sizes":
        with pytest.raises(RuntimeError):
            torch.cat(tensors, dim=1)
        with pytest.raises(RuntimeError):
            cat_channels(tensors)
        return
    else:
        want = torch.cat(tensors, dim=1)
    with _Ops() as seen:
        got = cat_channels(tensors)
    assert "cat" in seen.ops and torch.equal(got, want)


@needs_kernel
def test_tracing_records_the_cat_op():
    class Join(torch.nn.Module):
        def forward(self, x, y):
            return cat_channels((x, y))

    a, b = _maps((3, 4), (4, 5, 6), CL3)
    traced = torch.jit.trace(Join(), (a, b))
    assert "aten::cat" in str(traced.graph)
    assert torch.equal(traced(a, b), torch.cat((a, b), dim=1))


@needs_kernel
@pytest.mark.parametrize("name, kwargs", [("unet3d", {"features": [4, 8, 16]}),
                                          ("dynunet", {"features": [4, 8, 16]})])
def test_a_channels_last_unet_predicts_exactly_as_with_torch_cat(name, kwargs, monkeypatch):
    torch.manual_seed(0)
    net = create_model(name, in_channels=1, num_classes=3, spatial_dims=3, **kwargs).to(memory_format=CL3).eval()
    x = torch.randn(2, 1, 16, 16, 16).contiguous(memory_format=CL3)
    outs = []
    for use_kernel in (True, False):
        if not use_kernel:
            monkeypatch.setattr(concat, "_kernel_for", lambda tensors: None)
        with torch.inference_mode(), _Ops() as seen:
            outs.append(net(x))
        assert ("cat" in seen.ops) is not use_kernel
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
