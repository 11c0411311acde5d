"""medzoo.models.layers.conv: transposed convolutions that add their bias apart from the convolution on the CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from medzoo.models.layers.conv import ConvTranspose2d, ConvTranspose3d, splits_bias
from medzoo.models.layers.factories import ConvTranspose

CL3, CL2 = torch.channels_last_3d, torch.channels_last


class _BiasInConv(TorchDispatchMode):
    """Records whether each convolution call got a bias."""

    def __init__(self):
        super().__init__()
        self.biases = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # inference mode dispatches the composite conv_transpose op before it becomes a convolution
        if func.overloadpacket in (torch.ops.aten.convolution, torch.ops.aten.conv_transpose3d):
            self.biases.append(args[2] is not None)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("cls, ref_cls, shape, layout", [
    (ConvTranspose3d, nn.ConvTranspose3d, (2, 6, 3, 4, 5), CL3),
    (ConvTranspose3d, nn.ConvTranspose3d, (2, 6, 3, 4, 5), torch.contiguous_format),
    (ConvTranspose2d, nn.ConvTranspose2d, (2, 6, 5, 7), CL2),
])
@pytest.mark.parametrize("autocast", [False, True])
def test_matches_pytorch_forward_and_backward(cls, ref_cls, shape, layout, autocast):
    gen = torch.Generator().manual_seed(0)
    ours, ref = cls(6, 4, 2, stride=2), ref_cls(6, 4, 2, stride=2)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    with torch.no_grad():
        ref.bias.normal_(generator=gen)
    ours.load_state_dict(ref.state_dict())
    x0 = torch.randn(*shape, generator=gen).contiguous(memory_format=layout)
    grads, outs = [], []
    for module in (ours, ref):
        x = x0.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), _BiasInConv() as seen:
            y = module(x)
        (y.float() * torch.arange(y.numel()).view_as(y).sin()).sum().backward()
        outs.append((y, seen.biases))
        grads.append([x.grad, module.weight.grad, module.bias.grad])
    (y, biases), (y_ref, _) = outs
    split = autocast or layout is not torch.contiguous_format
    assert biases == [not split]  # the convolution ran without its bias exactly when it is added apart
    assert y.dtype == y_ref.dtype and y.is_contiguous(memory_format=layout) == y_ref.is_contiguous(memory_format=layout)
    tol = {"atol": 1e-5, "rtol": 1e-5} if not autocast else {"atol": 0.05, "rtol": 0.02}
    torch.testing.assert_close(y.float(), y_ref.float(), **tol)
    for got, want in zip(*grads):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, atol=tol["atol"] * max(1.0, want.abs().max().item()), rtol=tol["rtol"])


def test_output_size_and_no_bias_and_the_factory():
    up = ConvTranspose3d(3, 2, 3, stride=2, padding=1)
    x = torch.randn(1, 3, 4, 5, 6).contiguous(memory_format=CL3)
    assert up(x, output_size=[8, 10, 12]).shape == (1, 2, 8, 10, 12)
    assert up(x).shape == (1, 2, 7, 9, 11)
    plain = ConvTranspose3d(3, 2, 2, stride=2, bias=False)
    with _BiasInConv() as seen:
        plain(x)
    assert seen.biases == [False]
    assert ConvTranspose[3] is ConvTranspose3d and ConvTranspose[2] is ConvTranspose2d


def test_splits_bias_rules():
    x, bias = torch.randn(1, 2, 3, 4, 5), torch.zeros(2, requires_grad=True)
    assert not splits_bias(x, bias)  # fp32 default layout: PyTorch's fused bias is as fast
    assert splits_bias(x.contiguous(memory_format=CL3), bias)
    assert splits_bias(x.to(torch.bfloat16), bias)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert splits_bias(x, bias)
    # no bias gradient to take: the bias stays in the convolution, where it costs nothing
    assert not splits_bias(x.contiguous(memory_format=CL3), bias.detach())
    for context in (torch.no_grad(), torch.inference_mode()):
        with context:
            assert not splits_bias(x.contiguous(memory_format=CL3), bias)


@pytest.mark.parametrize("context", ["no_grad", "inference_mode"])
def test_prediction_keeps_the_bias_in_the_convolution(context):
    up = ConvTranspose3d(6, 4, 2, stride=2)
    ref = nn.ConvTranspose3d(6, 4, 2, stride=2)
    ref.load_state_dict(up.state_dict())
    x = torch.randn(2, 6, 3, 4, 5).contiguous(memory_format=CL3)
    with {"no_grad": torch.no_grad(), "inference_mode": torch.inference_mode()}[context], _BiasInConv() as seen:
        y = up(x)
        y_ref = ref(x)
    assert seen.biases == [True, True]
    torch.testing.assert_close(y, y_ref, atol=1e-6, rtol=1e-6)
