"""Prediction in the channels-last layout: which networks get it, that it is applied, same result."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from medzoo.errors import ConfigError
from medzoo.inference.predictor import Predictor, inference_memory_format
from medzoo.planning.plan import Plan
from support.inference import blob_image, make_run

CPU, GPU = torch.device("cpu"), torch.device("cuda")
CL3D = torch.channels_last_3d


def _plan(model: str, spatial_dims: int = 3) -> Plan:
    patch = (8, 8, 8) if spatial_dims == 3 else (8, 8)
    return Plan(model=model, in_channels=1, num_classes=2, patch_size=patch, spatial_dims=spatial_dims)


def test_memory_format_rules_per_card_device_and_backend(caplog):
    net = torch.nn.Conv3d(1, 2, 1)
    assert inference_memory_format("auto", _plan("unet3d"), CPU, net) == CL3D  # its card asks for it
    assert inference_memory_format("auto", _plan("unet2d", 2), CPU, net) == torch.channels_last
    assert inference_memory_format("auto", _plan("vnet"), CPU, net) is None  # measured slower in channels-last
    assert inference_memory_format("auto", _plan("unet3d"), GPU, net) is None  # not measured on GPUs
    assert inference_memory_format("channels_last", _plan("vnet"), CPU, net) == CL3D
    assert inference_memory_format("contiguous", _plan("unet3d"), CPU, net) is None
    exported = lambda x: x  # noqa: E731 - an ONNX Runtime / OpenVINO model is a plain callable
    assert inference_memory_format("auto", _plan("unet3d"), CPU, exported) is None
    with caplog.at_level(logging.WARNING, logger="medzoo.inference.predictor"):
        assert inference_memory_format("channels_last", _plan("unet3d"), CPU, exported) is None
    assert "torch backend" in caplog.text
    with pytest.raises(ConfigError, match="memory_format must be one of"):
        inference_memory_format("nhwc", _plan("unet3d"), CPU, net)


def _layouts_seen(model: torch.nn.Module) -> list[bool]:
    """Installs a hook on the first convolution; returns the list it appends "output is channels-last" to."""
    seen: list[bool] = []
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv3d))
    conv.register_forward_hook(lambda m, a, out: seen.append(out.is_contiguous(memory_format=CL3D)))
    return seen


def test_predictor_runs_a_channels_last_card_in_channels_last_with_the_same_result(tmp_path):
    # two input channels, so a window batch is channels-last only if the layout is really applied
    run, _ = make_run(
        tmp_path / "run", "unet3d", 2, 3, patch_size=(16, 16, 8), model_kwargs={"features": [4, 8]},
        normalization=["zscore", "zscore"], modalities=["t1", "t2"],
    )  # fmt: skip
    image = blob_image(shape=(21, 17, 11), channels=2)
    default = Predictor.from_run(run, device="cpu")
    plain = Predictor.from_run(run, device="cpu", memory_format="contiguous")
    assert default.memory_format == CL3D and plain.memory_format is None
    assert all(p.is_contiguous(memory_format=CL3D) for p in default.model.parameters() if p.dim() == 5)
    assert all(p.is_contiguous() for p in plain.model.parameters())
    seen_default, seen_plain = _layouts_seen(default.model), _layouts_seen(plain.model)
    labels, probs = default.predict_case(image, probabilities=True)
    ref_labels, ref_probs = plain.predict_case(image, probabilities=True)
    assert seen_default and all(seen_default) and seen_plain and not any(seen_plain)
    assert labels.spatial_shape == image.spatial_shape
    np.testing.assert_array_equal(labels.affine, image.affine)
    # only the convolutions' summation order differs: float rounding, far below float16's resolution
    np.testing.assert_allclose(probs.array.astype(np.float32), ref_probs.array.astype(np.float32), atol=2e-3)
    gap = np.sort(ref_probs.array.astype(np.float32), axis=0)
    clear = (gap[-1] - gap[-2]) > 1e-2  # voxels that are not near-ties
    np.testing.assert_array_equal(labels.array[0][clear], ref_labels.array[0][clear])


def test_predictor_leaves_a_contiguous_card_contiguous(tmp_path):
    run, _ = make_run(tmp_path / "run", "vnet_light", 1, 2, patch_size=(16, 16, 16))
    predictor = Predictor.from_run(run, device="cpu")
    assert predictor.memory_format is None
    assert all(p.is_contiguous() for p in predictor.model.parameters())


def test_contiguous_converts_a_channels_last_network_back(tmp_path):
    import medzoo

    net = medzoo.create_model("unet3d", in_channels=1, num_classes=2, features=[4, 8])
    net.to(memory_format=CL3D)  # e.g. the network a training run left in channels-last
    plan = Plan(model="unet3d", in_channels=1, num_classes=2, patch_size=(8, 8, 8))
    Predictor(net, plan, device="cpu", memory_format="contiguous")
    assert all(p.is_contiguous() for p in net.parameters())
    Predictor(net, plan, device="cpu")  # auto: unet3d's card asks for channels-last
    assert all(p.is_contiguous(memory_format=CL3D) for p in net.parameters() if p.dim() == 5)


def test_predict_cli_passes_memory_format(tmp_path, monkeypatch):
    from medzoo.cli import main as cli_main
    from medzoo.io.readers import write_volume

    run, _ = make_run(tmp_path / "run", "unet3d", 1, 2, patch_size=(8, 8, 8), model_kwargs={"features": [4, 8]})
    image = blob_image(shape=(12, 10, 9))
    write_volume(image, tmp_path / "in" / "scan.nii.gz")
    import medzoo.inference.predictor as predictor_module

    seen = {}
    original = predictor_module.inference_memory_format

    def spy(memory_format, plan, device, model):
        seen["memory_format"] = memory_format
        return original(memory_format, plan, device, model)

    monkeypatch.setattr(predictor_module, "inference_memory_format", spy)
    code = cli_main(["predict", "--model", str(run), "--input", str(tmp_path / "in"), "--output",
                     str(tmp_path / "out"), "--backend", "torch", "--device", "cpu",
                     "--memory-format", "contiguous", "--no-progress"])  # fmt: skip
    assert code == 0 and seen["memory_format"] == "contiguous"
    assert (tmp_path / "out" / "scan.nii.gz").exists()

