"""Every segmentation network in the registry trains through ``medzoo train --model NAME`` and predicts
through ``medzoo predict`` on a tiny phantom (slow: run with ``-m slow``; tiny width settings from each card).

Parametrized over :func:`medzoo.list_models`, so a newly registered network is covered automatically.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from medzoo.cli import main
from medzoo.inference.backends import _installed
from medzoo.io.readers import read_volume
from medzoo.models import get_card, list_models

SEGMENTATION = [n for n in list_models() if get_card(n).task == "segmentation"]
# OpenVINO 2026.4 computes these networks differently from ONNX Runtime / PyTorch (hyperdensenet: max |diff|
# 0.11 on the logits); the check catches it and `predict` falls back to PyTorch.
OPENVINO_DIFFERS = {"hyperdensenet"}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    data = tmp_path_factory.mktemp("cli_zoo") / "data"
    assert main(["phantom", "--out", str(data), "--cases", "3", "--test-cases", "1",
                 "--shape", "26", "30", "22", "--seed", "5"]) == 0
    return data


def _patch_args(name: str) -> tuple[int, list[str]]:
    """(spatial dims, --patch-size values): about 16 per axis in 3D, 32 in 2D, valid for the card's rule."""
    card = get_card(name)
    dims = 3 if 3 in card.spatial_dims else 2
    base = 16 if dims == 3 else 32
    return dims, [str(card.valid_size(base))] * dims


@pytest.mark.slow
@pytest.mark.parametrize("name", SEGMENTATION)
def test_train_and_predict_through_the_cli(name: str, phantom, tmp_path):
    card = get_card(name)
    dims, patch = _patch_args(name)
    run, pred = tmp_path / "run", tmp_path / "pred"
    model_args = []
    for key, value in card.tiny_kwargs.items():
        model_args += ["--model-arg", f"{key}={json.dumps(value)}"]
    code = main(["train", "--data", str(phantom), "--out", str(run), "--model", name, "--spatial-dims", str(dims),
                 "--epochs", "1", "--iterations", "2", "--batch-size", "2", "--patch-size", *patch,
                 "--device", "cpu", "--num-workers", "0", "--no-progress", *model_args])
    assert code == 0, f"{name}: medzoo train failed"
    plan = json.loads((run / "plan.json").read_text())
    assert plan["model"] == name and plan["spatial_dims"] == dims
    assert (run / "checkpoint_best.pt").is_file()

    code = main(["predict", "--model", str(run), "--input", str(phantom / "imagesTs"), "--output", str(pred),
                 "--device", "cpu", "--no-progress"])
    assert code == 0, f"{name}: medzoo predict failed"
    if _installed("onnx", "openvino"):  # the default backend on the CPU: exported, OpenVINO checked
        from medzoo.inference.backends import export_checks

        records = sorted((run / ".medzoo_cache").glob("*.onnx"))  # the one cache file, its checks inside
        assert records, f"{name}: the network was not exported for OpenVINO"
        verdict = export_checks(records[0])["openvino"]
        assert verdict["ok"] == (name not in OPENVINO_DIFFERS), f"{name}: OpenVINO check {verdict}"
    inputs = sorted((phantom / "imagesTs").glob("*.nii.gz"))
    assert inputs
    for image_path in inputs:
        image = read_volume(image_path)
        prediction = read_volume(pred / image_path.name)
        assert prediction.spatial_shape == image.spatial_shape
        np.testing.assert_allclose(prediction.affine, image.affine, atol=1e-5)
        assert set(np.unique(prediction.array).tolist()) <= set(range(plan["num_classes"]))
