"""Region-based prediction: one sigmoid per region, painted into the dataset's label values in its order."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from medzoo.inference.ensemble import read_probabilities
from medzoo.inference.predictor import Predictor, predict
from medzoo.io.readers import write_volume
from medzoo.io.volume import Volume
from medzoo.models import registry
from support.inference import make_run, oblique_affine

NESTED = "_infer_test_nested_regions"
REGIONS = {"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}


class NestedNet(nn.Module):
    """Region logits 10 * (x - t) for thresholds t = 0, 0.5, 1: nested regions, as BraTS WT ⊃ TC ⊃ ET."""

    def __init__(self, in_channels: int, num_classes: int, spatial_dims: int = 3) -> None:
        super().__init__()
        self.conv = (nn.Conv3d if spatial_dims == 3 else nn.Conv2d)(in_channels, num_classes, 1)
        with torch.no_grad():
            self.conv.weight.fill_(10.0)
            self.conv.bias.copy_(torch.tensor([0.0, -5.0, -10.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _region_run(tmp_path, monkeypatch):
    card = registry.ModelCard(name=NESTED, spatial_dims=(2, 3), typical_patch=(8, 8, 8))
    monkeypatch.setitem(registry._REGISTRY, NESTED, registry._Entry(NestedNet, card))
    run, _ = make_run(
        tmp_path / "run", NESTED, 1, 3, patch_size=(8, 8, 8), normalization=["none"], regions=REGIONS,
        regions_class_order=[2, 1, 4], labels={0: "background", 1: "necrosis", 2: "edema", 3: "enhancing"},
    )  # fmt: skip
    return run


def _scan():
    values = np.array([-1.0, 0.2, 0.7, 1.5], np.float32)  # none, WT, WT+TC, WT+TC+ET
    array = np.repeat(values, 5)[:, None, None] * np.ones((1, 6, 7), np.float32)
    return Volume(array[None], oblique_affine()), np.repeat([0, 2, 1, 4], 5)


def test_region_run_predicts_the_datasets_label_values(tmp_path, monkeypatch):
    run = _region_run(tmp_path, monkeypatch)
    image, expected = _scan()
    labels, probs = Predictor.from_run(run, device="cpu", amp="none").predict_case(image, probabilities=True)
    assert labels.array.shape == (1, 20, 6, 7) and np.allclose(labels.affine, image.affine)
    assert np.array_equal(labels.array[0][:, 3, 3], expected)
    p = probs.array.astype(np.float32)
    assert p.shape == (3, 20, 6, 7) and p.min() >= 0 and p.max() <= 1
    assert not np.allclose(p.sum(0), 1.0, atol=0.05)  # independent sigmoids, not a softmax


def test_saved_region_probabilities_carry_their_painting_order(tmp_path, monkeypatch):
    from medzoo.inference.ensemble import ensemble_folders

    run = _region_run(tmp_path, monkeypatch)
    image, expected = _scan()
    write_volume(image, tmp_path / "in" / "scan.nii.gz")
    for out in ("a", "b"):
        predict(run, tmp_path / "in", tmp_path / out, device="cpu", backend="torch", amp="none",
                save_probabilities=True, progress=False)  # fmt: skip
    _, _, order = read_probabilities(tmp_path / "a" / "scan_probabilities.npz")
    assert order == [2, 1, 4]
    written = ensemble_folders([tmp_path / "a", tmp_path / "b"], tmp_path / "ens")
    from medzoo.io.readers import read_volume

    assert np.array_equal(read_volume(written[0]).array[0][:, 3, 3], expected)
