"""Skipping all-air windows: exact labels where the input is non-zero, background elsewhere, exact geometry."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from medzoo.inference import sliding_window, sliding_window_argmax
from medzoo.inference.predictor import Predictor
from medzoo.io.volume import Volume
from support.inference import make_run, oblique_affine


class _Counting(nn.Module):
    """A small conv net (a bias, so all-zero windows still give non-trivial outputs) counting its windows."""

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv3d(1, 6, 3, padding=1), nn.Tanh(), nn.Conv3d(6, k, 3, padding=1))
        with torch.no_grad():
            self.net[2].bias.copy_(torch.tensor([0.0, 0.3, -0.2])[:k])
        self.windows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.windows += x.shape[0]
        return self.net(x)


def _head(shape=(30, 26, 22), seed: int = 0) -> np.ndarray:
    """(1, *shape) float32: a noisy ellipsoid plus a small far blob, exactly zero elsewhere.

    The blob stretches the non-zero bounding box, so some windows inside the crop are all air.
    """
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = np.sqrt(sum(((g + 0.35) / a) ** 2 for g, a in zip(grids, (0.5, 0.55, 0.6))))
    blob = np.sqrt(sum(((g - 0.8) / 0.15) ** 2 for g in grids)) < 1.0
    inside = (r < 1.0) | blob
    image = np.where(inside, 1.0 + rng.normal(size=shape), 0.0).astype(np.float32)
    image[inside & (image == 0)] = 0.5
    return image[None]


def test_skip_empty_is_exact_where_the_input_is_non_zero():
    x = torch.from_numpy(_head())[None].repeat(2, 1, 1, 1, 1)
    x[1, :, :, :, :11] = 0  # the second item has more air: different windows are skipped per item
    net = _Counting()
    full = sliding_window(x, net, (8, 8, 8), overlap=0.5, batch_size=3)
    all_windows = net.windows
    net.windows = 0
    skipped = sliding_window(x, net, (8, 8, 8), overlap=0.5, batch_size=3, skip_empty=True)
    assert 0 < net.windows < all_windows  # some windows really skipped
    inside = (x != 0).any(1)  # (B, *S)
    np.testing.assert_allclose(skipped.permute(0, 2, 3, 4, 1)[inside], full.permute(0, 2, 3, 4, 1)[inside],
                               rtol=0, atol=1e-6)  # fmt: skip
    # uncovered air: zeros for every class (label 0); covered air keeps the network's output
    uncovered = (skipped == 0).all(1)
    assert uncovered.any() and not (uncovered & inside).any()
    assert (full.argmax(1)[uncovered] != 0).any()  # the net alone would not call that air background

    net.windows = 0
    labels, probs = sliding_window_argmax(x, net, (8, 8, 8), overlap=0.5, batch_size=3, skip_empty=True,
                                          return_probabilities=True)  # fmt: skip
    assert torch.equal(labels[inside], full.argmax(1).to(torch.uint8)[inside])
    assert (labels[uncovered] == 0).all()
    assert torch.all(probs[:, 0][uncovered] == 1) and torch.all(probs[:, 1:].permute(1, 0, 2, 3, 4)[:, uncovered] == 0)
    labels_only, _ = sliding_window_argmax(x, net, (8, 8, 8), overlap=0.5, batch_size=3, skip_empty=True)
    assert torch.equal(labels_only, labels)


def test_all_zero_input_still_runs_the_network():
    x = torch.zeros((1, 1, 12, 12, 12))
    net = _Counting()
    out = sliding_window(x, net, (8, 8, 8), overlap=0.5, skip_empty=True)
    assert net.windows == 8 and torch.isfinite(out).all()
    assert torch.equal(out, sliding_window(x, net, (8, 8, 8), overlap=0.5))


def test_predictor_skip_on_oblique_anisotropic_phantom_keeps_labels_and_geometry(tmp_path):
    run, _ = make_run(
        tmp_path / "run", "unet3d", 1, 3, patch_size=(8, 8, 8), model_kwargs={"features": [4, 8]},
        crop_to_nonzero=True, normalization=["zscore_nonzero"],
    )  # fmt: skip
    array = _head((34, 27, 19))
    image = Volume(array, oblique_affine(spacing=(0.9, 1.4, 2.7), seed=3))
    fast = Predictor.from_run(run, device="cpu")
    assert fast.skip_empty  # on by default for plans that crop to the non-zero region
    calls = {"n": 0}
    forward = fast.model.forward

    def counting(x):
        calls["n"] += x.shape[0]
        return forward(x)

    fast.model.forward = counting
    out = fast.predict_volume(image)
    skipped_calls = calls["n"]
    slow = Predictor.from_run(run, device="cpu", skip_empty=False)
    slow.model.forward = counting
    calls["n"] = 0
    ref = slow.predict_volume(image)
    assert skipped_calls < calls["n"]
    for vol in (out, ref):
        assert vol.array.shape == (1, 34, 27, 19) and vol.array.dtype == np.uint8
        np.testing.assert_array_equal(vol.affine, image.affine)
    inside = array[0] != 0
    np.testing.assert_array_equal(out.array[0][inside], ref.array[0][inside])
    assert out.array[0][inside].max() > 0  # not a trivially empty map
