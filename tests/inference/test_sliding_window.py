"""Sliding-window inference: window positions, blending, mirroring, size rules, MONAI equivalence."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from medzoo.inference import importance_map, sliding_window, sliding_window_argmax, window_starts


def _net(in_ch: int, k: int, dims: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    conv = nn.Conv3d if dims == 3 else nn.Conv2d
    return nn.Sequential(conv(in_ch, 6, 3, padding=1), nn.ReLU(), conv(6, k, 3, padding=1)).eval()


class _Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1.0


class _Divisible(nn.Module):
    """1x1 conv that refuses sizes that are not multiples of 8 (like a U-Net)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 1)
        self.card = SimpleNamespace(valid_size=lambda s: -(-s // 8) * 8)
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert all(s % 8 == 0 for s in x.shape[2:]), x.shape
        self.seen.append(tuple(x.shape[2:]))
        return self.conv(x)


@pytest.mark.parametrize(
    "size,patch,overlap,expected",
    [(10, 4, 0.5, [0, 2, 4, 6]), (11, 4, 0.5, [0, 2, 4, 6, 7]), (4, 4, 0.5, [0]), (3, 8, 0.5, [-2]),
     (160, 96, 0.5, [0, 48, 64]), (10, 4, 0.0, [0, 4, 6])],
)
def test_window_starts_cover_the_axis_and_end_flush(size, patch, overlap, expected):
    starts = window_starts(size, patch, overlap)
    assert starts == expected
    covered = set()
    for s in starts:
        covered.update(range(max(s, 0), min(s + patch, size)))
    assert covered == set(range(size))


def test_importance_map_gaussian_peaks_in_the_centre_and_is_clamped():
    w = importance_map((16, 12, 8), "gaussian")
    assert w.shape == (16, 12, 8) and w.dtype == torch.float32
    assert w.min().item() >= 1e-3 - 1e-9
    assert w[8, 6, 4] > w[0, 0, 0] and w.argmax().item() in {
        i * 96 + j * 8 + k for i in (7, 8) for j in (5, 6) for k in (3, 4)
    }
    assert torch.equal(importance_map((5, 5), "constant"), torch.ones(5, 5))


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("shape,patch", [((2, 3, 19, 23, 11), (8, 8, 8)), ((1, 3, 5, 23, 7), (8, 8, 8)),
                                         ((2, 3, 19, 23), (8, 10))])
def test_identity_network_gives_the_input_back(blend, shape, patch):
    x = torch.randn(shape)
    out = sliding_window(x, _Identity(), patch, overlap=0.5, blend=blend, batch_size=3)
    assert out.shape == x.shape and out.dtype == torch.float32
    torch.testing.assert_close(out, x, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("overlap", [0.5, 0.25])
def test_matches_monai_sliding_window_inference(dims, overlap):
    inferers = pytest.importorskip("monai.inferers")
    net = _net(2, 3, dims)
    shape = (2, 2, 21, 26, 13) if dims == 3 else (2, 2, 37, 26)
    patch = (8, 12, 8) if dims == 3 else (16, 12)
    x = torch.randn(shape)
    with torch.no_grad():
        ref = inferers.sliding_window_inference(x, patch, 3, net, overlap=overlap, mode="gaussian")
    out = sliding_window(x, net, patch, overlap=overlap, blend="gaussian", batch_size=3)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    labels, probs = sliding_window_argmax(x, net, patch, overlap=overlap, batch_size=4, return_probabilities=True)
    assert labels.dtype == torch.uint8 and labels.shape == (shape[0], *shape[2:])
    assert torch.equal(labels.long(), ref.argmax(1))
    assert probs.dtype == torch.float16
    torch.testing.assert_close(probs.float(), ref.softmax(1), atol=2e-3, rtol=0)


def test_input_smaller_than_patch_is_padded_and_cropped_back_like_monai():
    inferers = pytest.importorskip("monai.inferers")
    net = _net(1, 2)
    x = torch.randn(1, 1, 5, 30, 6)
    with torch.no_grad():
        ref = inferers.sliding_window_inference(x, (16, 16, 16), 2, net, overlap=0.5, mode="gaussian")
    out = sliding_window(x, net, (16, 16, 16), overlap=0.5, batch_size=2)
    assert out.shape == (1, 2, 5, 30, 6)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_mirroring_averages_flipped_predictions():
    net = _net(1, 2, seed=3)
    x = torch.randn(1, 1, 12, 10, 8)
    out = sliding_window(x, net, (12, 10, 8), mirror_axes=(0, 2))
    with torch.no_grad():
        expected = sum(torch.flip(net(torch.flip(x, d)), d) for d in [(), (2,), (4,), (2, 4)]) / 4
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    plain = sliding_window(x, net, (12, 10, 8))
    assert not torch.allclose(out, plain, atol=1e-4)  # the mirrored copies did change something


def test_model_size_rule_pads_windows_and_crops():
    net = _Divisible().eval()
    x = torch.randn(1, 1, 13, 9, 10)
    out = sliding_window(x, net, (10, 9, 6), overlap=0.5, blend="constant")
    assert out.shape == (1, 2, 13, 9, 10)
    assert set(net.seen) == {(16, 16, 8)}
    with torch.no_grad():
        expected = net.conv(x)  # 1x1 conv: every window predicts the same values
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_softmax_blending_gives_probabilities():
    net = _net(1, 3)
    x = torch.randn(1, 1, 14, 14, 14)
    out = sliding_window(x, net, (8, 8, 8), apply_softmax=True)
    torch.testing.assert_close(out.sum(1), torch.ones(1, 14, 14, 14), atol=1e-5, rtol=0)
    assert out.min() >= 0


def test_output_is_an_ordinary_tensor_and_progress_bar_runs():
    x = torch.randn(1, 1, 9, 9, 9)
    out = sliding_window(x, _Identity(), (4, 4, 4), progress=True)
    out += 1  # would raise for an inference-mode tensor
    assert not out.is_inference()


def test_bad_arguments_are_refused():
    x = torch.randn(1, 1, 9, 9, 9)
    with pytest.raises(ValueError, match="patch_size"):
        sliding_window(x, _Identity(), (4, 4))
    with pytest.raises(ValueError, match="overlap"):
        sliding_window(x, _Identity(), (4, 4, 4), overlap=1.0)
    with pytest.raises(ValueError, match="mirror axis"):
        sliding_window(x, _Identity(), (4, 4, 4), mirror_axes=(3,))
