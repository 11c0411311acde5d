"""medzoo.accel.warp: the CPU 3D resampling by 2D samplers on slice stacks equals 3D grid_sample."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medzoo import runtime
from medzoo.accel.warp import sample_by_slices, stack_slices


def _coordinates(voxels: torch.Tensor):
    def fill(out, scale, offset):
        for axis in range(3):
            out[:, axis] = voxels[:, axis] * scale[axis] + offset[axis]

    return fill


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_equals_3d_grid_sample_inside_and_beyond_the_region(mode):
    gen = torch.Generator().manual_seed(0)
    region, patch = (7, 9, 8), (5, 6, 4)
    image = torch.randn(2, 3, *region, generator=gen)
    label = torch.randint(0, 4, (2, 1, *region), generator=gen).float()
    # voxel coordinates (array order) from well outside to well inside the region
    voxels = torch.rand(2, 3, *patch, generator=gen) * torch.tensor([12.0, 14.0, 13.0]).view(1, 3, 1, 1, 1) - 2.5
    out, lab = sample_by_slices(image, label, patch, _coordinates(voxels), mode)
    sizes = torch.tensor(region, dtype=torch.float32).view(1, 3, 1, 1, 1)
    grid = ((2 * voxels + 1) / sizes - 1).flip(1).movedim(1, -1)  # normalised, x first
    want = F.grid_sample(image, grid, mode=mode, padding_mode="zeros", align_corners=False)
    want_lab = F.grid_sample(label, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-4)
    assert (lab != want_lab).float().mean() < 0.01  # nearest: only float ties at voxel borders may differ


def test_the_stack_holds_each_slice_between_zero_rows():
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 1, 2, 3, 4) + 1
    stack = stack_slices(x)[0, 0]  # ((2 + 3) * (3 + 1), 4)
    assert stack.shape == (20, 4)
    assert torch.equal(stack[4:7], x[0, 0, 0]) and torch.equal(stack[8:11], x[0, 0, 1])
    others = torch.ones(20, dtype=torch.bool)
    others[4:7] = others[8:11] = False
    assert (stack[others] == 0).all()


def test_the_runtime_uses_it_on_the_cpu_only():
    assert runtime.resampler_3d("cpu") is sample_by_slices
    assert runtime.resampler_3d("meta") is None and runtime.resampler_3d(torch.device("cuda")) is None
