"""The fused instance-norm + activation used by dynunet."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medzoo.models.dynunet import instance_norm_act


@pytest.mark.parametrize("batch, slope", [(1, 0.01), (3, 0.01), (2, None)])
def test_instance_norm_act_matches_modules_forward_and_backward(batch: int, slope: float | None) -> None:
    gen = torch.Generator().manual_seed(0)
    norm = nn.InstanceNorm3d(5, affine=True)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(5, generator=gen) + 0.5)
        norm.bias.copy_(torch.randn(5, generator=gen))
    x0 = torch.randn(batch, 5, 6, 7, 4, generator=gen) * 3 + 1
    g = torch.randn(batch, 5, 6, 7, 4, generator=gen)
    act = nn.LeakyReLU(slope, inplace=True) if slope is not None else nn.Identity()

    x_ref = x0.clone().requires_grad_(True)
    (act(norm(x_ref * 1.0)) * g).sum().backward()
    ref_grads = (x_ref.grad.clone(), norm.weight.grad.clone(), norm.bias.grad.clone())
    norm.zero_grad()

    x = x0.clone().requires_grad_(True)
    y = instance_norm_act(x * 1.0, norm.weight, norm.bias, 1e-5, slope)
    (y * g).sum().backward()
    with torch.no_grad():
        torch.testing.assert_close(y, act(norm(x0)), atol=1e-5, rtol=1e-5)
    for got, want in zip((x.grad, norm.weight.grad, norm.bias.grad), ref_grads):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
