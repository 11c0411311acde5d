"""Peak memory of predicting a 512^3 volume with 4 classes (slow: run with -m slow)."""

from __future__ import annotations

import subprocess
import sys

import pytest

_SCRIPT = r"""
import resource
import numpy as np, torch
from torch import nn
from medzoo.planning.plan import Plan
from medzoo.io.volume import Volume
from medzoo.inference.predictor import Predictor

class Pointwise(nn.Module):  # a 1x1 convolution from 1 to 4 channels, written element-wise (fast on CPU)
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([0.0, 1.0, -1.0, 0.5]).view(1, 4, 1, 1, 1))
        self.b = nn.Parameter(torch.tensor([0.2, 0.0, 0.0, 0.1]).view(1, 4, 1, 1, 1))
    def forward(self, x):
        return x * self.w + self.b

n = 512
plan = Plan(model="pointwise", in_channels=1, num_classes=4, patch_size=(96, 96, 96), normalization=["zscore"])
arr = np.empty((1, n, n, n), np.float32)
arr[0] = np.linspace(-1, 1, n, dtype=np.float32)[:, None, None]
image = Volume(arr, np.array([[0, 0.8, 0, 3], [0.6, 0, 0.8, -2], [-0.8, 0, 0.6, 1], [0, 0, 0, 1]]))
out = Predictor(Pointwise().eval(), plan, batch_size=2).predict_volume(image)
assert out.array.shape == (1, n, n, n) and out.array.dtype == np.uint8
assert np.array_equal(out.affine, image.affine)
z = (arr[0, :, 0, 0] - arr.mean()) / arr.std()
logits = np.stack([np.full_like(z, 0.2), z, -z, 0.5 * z + 0.1])
expected = logits.argmax(0)
assert np.array_equal(out.array[0, :, 7, 300], expected), "wrong labels"
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


@pytest.mark.slow
def test_512_cube_with_4_classes_stays_under_2_gb():
    done = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    peak_mb = float(done.stdout.strip().splitlines()[-1])
    assert peak_mb < 2048, f"peak RSS {peak_mb:.0f} MB"
