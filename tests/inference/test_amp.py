"""Prediction under autocast: which precision each device and backend gets, and that it is applied."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from medzoo.errors import ConfigError
from medzoo.inference.predictor import Predictor, inference_amp_dtype
from medzoo.planning.plan import Plan
from support.inference import (
    THRESHOLD,
    ThresholdNet,
    blob_image,
    make_run,
    pretend_native_bf16,
    register_threshold,
)

CPU, GPU = torch.device("cpu"), torch.device("cuda")


def test_amp_rules_per_device_and_backend(monkeypatch):
    net = nn.Conv3d(1, 2, 1)
    pretend_native_bf16(monkeypatch, False)
    assert inference_amp_dtype("auto", CPU, net) is None  # emulated bf16 is slower than fp32: fp32
    pretend_native_bf16(monkeypatch, True)
    assert inference_amp_dtype("auto", CPU, net) == torch.bfloat16  # AMX / AVX512-BF16: bf16, as training
    assert inference_amp_dtype("none", CPU, net) is None
    pretend_native_bf16(monkeypatch, False)
    assert inference_amp_dtype("bf16", CPU, net) == torch.bfloat16  # asked for: kept
    assert inference_amp_dtype("fp16", CPU, net) is None  # fp16 is for CUDA
    assert inference_amp_dtype("none", GPU, net) is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert inference_amp_dtype("auto", GPU, net) == torch.bfloat16
    assert inference_amp_dtype("fp16", GPU, net) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert inference_amp_dtype("auto", GPU, net) == torch.float16
    exported = lambda x: x  # noqa: E731 - an ONNX Runtime / OpenVINO model is a plain callable
    assert inference_amp_dtype("bf16", CPU, exported) is None
    pretend_native_bf16(monkeypatch, True)
    assert inference_amp_dtype("auto", CPU, exported) is None  # an export runs as exported, in fp32
    with pytest.raises(ConfigError, match="amp must be one of"):
        inference_amp_dtype("fp8", CPU, net)


class _Recorder(ThresholdNet):
    """The threshold network, recording whether it ran under autocast and in which dtype."""

    def __init__(self) -> None:
        super().__init__(1, 2)
        self.seen: list[tuple[bool, torch.dtype]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        self.seen.append((torch.is_autocast_enabled("cpu"), out.dtype))
        return out


@pytest.mark.parametrize("amp, native, expected", [
    ("auto", False, (False, torch.float32)), ("auto", True, (True, torch.bfloat16)),
    ("none", True, (False, torch.float32)), ("bf16", False, (True, torch.bfloat16)),
])
def test_predictor_runs_the_network_in_the_chosen_precision(amp, native, expected, monkeypatch):
    pretend_native_bf16(monkeypatch, native)
    plan = Plan(model=THRESHOLD, in_channels=1, num_classes=2, patch_size=(8, 8, 8), normalization=["none"])
    net = _Recorder()
    image = blob_image()
    out = Predictor(net, plan, device="cpu", amp=amp).predict_volume(image)
    assert net.seen and set(net.seen) == {expected}
    # the threshold network's labels are exact in bf16 too (the sign of x survives rounding)
    np.testing.assert_array_equal(out.array[0], (image.array[0] > 0).astype(np.uint8))
    np.testing.assert_array_equal(out.affine, image.affine)


def test_predict_cli_passes_amp(tmp_path, monkeypatch):
    from medzoo.cli import main as cli_main
    from medzoo.io.readers import write_volume

    register_threshold(monkeypatch)
    run, _ = make_run(tmp_path / "run", THRESHOLD, 1, 2, patch_size=(8, 8, 8), normalization=["none"])
    image = blob_image()
    write_volume(image, tmp_path / "in" / "scan.nii.gz")
    seen = {}
    import medzoo.inference.predictor as predictor_module

    original = predictor_module.inference_amp_dtype

    def spy(amp, device, model):
        seen["amp"] = amp
        return original(amp, device, model)

    monkeypatch.setattr(predictor_module, "inference_amp_dtype", spy)
    code = cli_main(["predict", "--model", str(run), "--input", str(tmp_path / "in"), "--output",
                     str(tmp_path / "out"), "--backend", "torch", "--device", "cpu", "--amp", "bf16", "--no-progress"])
    assert code == 0 and seen["amp"] == "bf16"
    assert (tmp_path / "out" / "scan.nii.gz").is_file()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_predict_on_cuda_with_amp_keeps_geometry_and_labels(tmp_path, monkeypatch):
    register_threshold(monkeypatch)
    run, _ = make_run(tmp_path / "run", THRESHOLD, 1, 2, patch_size=(8, 8, 8), normalization=["none"])
    image = blob_image()
    predictor = Predictor.from_run(run, device="cuda")
    assert predictor.amp_dtype in (torch.bfloat16, torch.float16)
    out = predictor.predict_volume(image)
    assert out.spatial_shape == image.spatial_shape
    np.testing.assert_array_equal(out.affine, image.affine)
    np.testing.assert_array_equal(out.array[0], (image.array[0] > 0).astype(np.uint8))
