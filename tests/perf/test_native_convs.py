"""medzoo.perf.takes_native_conv_path / keep_native_conv_weights_contiguous: the fp32 convolutions PyTorch runs
on its own path keep contiguous weights in a channels-last network, with the same results."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from medzoo.models import create_model
from medzoo.perf import keep_native_conv_weights_contiguous, takes_native_conv_path

CL3 = torch.channels_last_3d


def _ran_native(conv: nn.Module, x: torch.Tensor) -> bool:
    """Whether PyTorch ran ``conv(x)`` on its own path (slow_conv3d / slow_conv_transpose3d), not oneDNN."""
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        conv(x)
    return any("slow_conv" in e.key for e in prof.key_averages())


@pytest.mark.parametrize("conv, shape", [
    (nn.Conv3d(1, 8, 3, padding=1), (1, 1, 24, 24, 24)),       # 1 * 1 * 24 * 24 <= 20480: native
    (nn.Conv3d(32, 32, 3, padding=1), (1, 32, 8, 8, 8)),       # 2048: native
    (nn.Conv3d(32, 32, 3, padding=1), (1, 32, 30, 30, 8)),     # 28800: oneDNN
    (nn.Conv3d(32, 32, 3, padding=1), (2, 32, 8, 8, 8)),       # a batch of two: oneDNN
    (nn.Conv3d(32, 32, 3, padding=1, groups=2), (1, 32, 8, 8, 8)),  # groups: oneDNN
    (nn.ConvTranspose3d(32, 16, 2, stride=2), (1, 32, 4, 4, 4)),    # transposed, small: native
    (nn.ConvTranspose3d(32, 16, 2, stride=2), (2, 32, 4, 4, 4)),
    (nn.Conv2d(16, 16, 3, padding=1), (1, 16, 20, 20)),          # 2D: 6400, native
    (nn.Conv2d(16, 16, 3, padding=1), (1, 16, 64, 64)),          # 65536: oneDNN
])
def test_the_rule_matches_what_pytorch_runs(conv, shape):
    x = torch.randn(shape)
    assert takes_native_conv_path(conv, shape) == _ran_native(conv, x)


@pytest.mark.parametrize("batch, expect_changed", [(1, True), (2, False)])
def test_only_native_path_weights_change_and_results_are_identical(batch, expect_changed):
    torch.manual_seed(0)
    net = create_model("unet3d", in_channels=1, num_classes=3, spatial_dims=3, features=[8, 16, 32, 64])
    net = net.to(memory_format=CL3)
    x = torch.randn(batch, 1, 32, 32, 32).contiguous(memory_format=CL3)
    moved = copy.deepcopy(net)
    params_before = [p for p in moved.parameters()]
    changed = keep_native_conv_weights_contiguous(moved, x.shape)
    assert (changed > 0) is expect_changed
    assert [p for p in moved.parameters()] == params_before  # the same Parameter objects (an optimizer's)
    for (name, a), (_, b) in zip(net.named_parameters(), moved.named_parameters()):
        assert torch.equal(a, b)
        conv_weight = name.endswith("weight") and a.dim() == 5 and a.shape[1] > 1
        if conv_weight and not b.is_contiguous(memory_format=CL3):
            assert b.is_contiguous()  # those that changed are plainly contiguous now
    outs, grads = [], []
    for model in (net, moved):
        model.zero_grad()
        y = model(x)
        y.square().mean().backward()
        outs.append(y.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)  # the same kernels ran
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_a_contiguous_network_or_one_the_meta_pass_cannot_run_is_left_alone():
    net = create_model("unet3d", in_channels=1, num_classes=3, spatial_dims=3, features=[8, 16])
    assert keep_native_conv_weights_contiguous(net, (1, 1, 16, 16, 16)) == 0  # not channels-last

    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(4, 4, 3, padding=1).to(memory_format=CL3)

        def forward(self, x):
            return self.conv(x) if bool(x.sum() > 0) else x  # needs values: no meta pass

    model = DataDependent()
    assert keep_native_conv_weights_contiguous(model, (1, 4, 8, 8, 8)) == 0
    assert model.conv.weight.is_contiguous(memory_format=CL3)
