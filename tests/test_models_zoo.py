"""Zoo-wide tests over every registered model (filled out below)."""

from __future__ import annotations

import pytest
import torch

import medzoo
from medzoo.errors import InputSizeError


def test_unet3d_output_at_input_size_and_size_error() -> None:
    net = medzoo.create_model("unet3d", in_channels=2, num_classes=3, features=(4, 8, 16, 32)).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 2, 24, 16, 32))
    assert out.shape == (1, 3, 24, 16, 32)
    with pytest.raises(InputSizeError, match=r"\(24, 16, 32\)"):
        net(torch.randn(1, 2, 23, 16, 30))
