"""Export to ONNX / TorchScript: checked against PyTorch, card written, usable by the predictor."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medzoo.cli import main
from medzoo.errors import ConfigError
from medzoo.export import export_model
from medzoo.inference.backends import OnnxModel, load_backend, outputs_agree
from medzoo.inference.predictor import Predictor
from support.inference import blob_image, make_run  # noqa: F401 - fp32_on_cpu: a fixture

pytestmark = pytest.mark.usefixtures("fp32_on_cpu")  # equal precision on any CPU (see the fixture)


@pytest.fixture
def run(tmp_path):
    run_dir, _ = make_run(
        tmp_path / "run", "unet3d", 2, 3, patch_size=(16, 16, 8), model_kwargs={"features": [4, 8]},
        modalities=["t1", "t2"], labels={0: "background", 1: "a", 2: "b"}, normalization=["none", "none"],
    )  # fmt: skip
    return run_dir


def test_onnx_export_matches_pytorch_with_dynamic_axes(run, tmp_path):
    result = export_model(run, "onnx", tmp_path / "exp" / "net.onnx")
    assert result.path.is_file() and result.max_abs_diff <= 1e-4 and result.dynamic_spatial
    card = json.loads(result.card_path.read_text())
    assert result.card_path.name == "net.json"
    assert card["labels"] == {"0": "background", "1": "a", "2": "b"} and card["patch_size"] == [16, 16, 8]
    assert card["plan"]["model"] == "unet3d" and card["opset"] >= 17
    model, plan = load_backend(result.path, backend="onnxruntime")
    assert isinstance(model, OnnxModel) and plan.modalities == ["t1", "t2"]
    torch_model, _ = load_backend(run, backend="torch", device="cpu")
    x = torch.randn(3, 2, 24, 16, 32)  # another batch and spatial size than exported with
    with torch.no_grad():
        assert outputs_agree(model(x).numpy(), torch_model(x).numpy(), 1e-4)["ok"]  # on the logits' scale
    assert not [p for p in result.path.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_onnxruntime_backend_gives_the_same_labels_as_torch(run, tmp_path):
    export_model(run, "onnx")  # default: RUN/model.onnx
    image = blob_image(shape=(21, 18, 11), channels=2)
    model, plan = load_backend(run, backend="onnxruntime")
    onnx_labels = Predictor(model, plan).predict_volume(image)
    torch_labels = Predictor.from_run(run, device="cpu").predict_volume(image)
    np.testing.assert_array_equal(onnx_labels.array, torch_labels.array)
    np.testing.assert_array_equal(onnx_labels.affine, image.affine)


def test_torchscript_export_matches_pytorch(run, tmp_path):
    result = export_model(run, "torchscript", tmp_path / "net.pt")
    loaded = torch.jit.load(str(result.path))
    torch_model, _ = load_backend(run, backend="torch", device="cpu")
    x = torch.randn(1, 2, 16, 16, 8)
    with torch.no_grad():
        assert outputs_agree(loaded(x).numpy(), torch_model(x).numpy(), 1e-4)["ok"]
    card = json.loads(result.card_path.read_text())
    assert card["format"] == "torchscript" and card["torchscript_method"] in {"script", "trace"}


def test_export_cli_and_bad_format(run, tmp_path, capsys):
    assert main(["export", "--model", str(run), "--format", "onnx", "--out", str(tmp_path / "cli.onnx")]) == 0
    assert (tmp_path / "cli.onnx").is_file() and (tmp_path / "cli.json").is_file()
    assert "cli.onnx" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="unknown export format"):
        export_model(run, "tflite")


def test_dynunet_exports_with_a_dynamic_batch(tmp_path):
    # its fused instance norm runs as a batch norm over a (1, B*C, ...) view, which ONNX cannot size: the
    # export must trace the plain instance_norm instead (fixed and size-generic spatial axes alike)
    run_dir, _ = make_run(tmp_path / "run", "dynunet", 1, 3, patch_size=(16, 16, 16),
                          model_kwargs={"features": [4, 8, 16]})  # fmt: skip
    for dynamic in (False, True):
        result = export_model(run_dir, "onnx", tmp_path / f"dyn_{dynamic}.onnx", dynamic_spatial=dynamic)
        assert result.dynamic_spatial == dynamic and result.max_abs_diff <= 1e-4


class _FixedSizes(torch.nn.Module):
    """A 1x1 conv whose output is reshaped with Python ints: right in eager mode for any input, but a trace (and
    so ONNX) bakes in the spatial size, and with ``fixed_batch`` the batch size too. ``*inputs`` keeps
    ``torch.jit.script`` out, so TorchScript traces."""

    def __init__(self, fixed_batch: bool):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 1)
        self.fixed_batch = fixed_batch

    def forward(self, *inputs):
        x = inputs[0]
        batch = int(x.shape[0]) if self.fixed_batch else x.shape[0]
        return self.conv(x).reshape(batch, 2, *(int(s) for s in x.shape[2:]))


def _fixed_plan():
    from medzoo.planning.plan import Plan

    return Plan(model="not_registered", in_channels=1, num_classes=2, patch_size=(8, 8, 4), normalization=["none"])


@pytest.mark.parametrize("fixed_batch", [False, True])
def test_torchscript_card_lists_only_the_axes_that_passed(tmp_path, fixed_batch, caplog):
    # before, the card always listed "batch" as dynamic, even for a trace that only takes a batch of 1
    from medzoo.export import export_network

    result = export_network(_FixedSizes(fixed_batch).eval(), _fixed_plan(), tmp_path / "net.pt", "torchscript")
    card = json.loads(result.card_path.read_text())
    assert card["torchscript_method"] == "trace" and not result.dynamic_spatial
    assert card["dynamic_axes"] == ([] if fixed_batch else ["batch"]) and result.dynamic_batch is not fixed_batch
    assert card["input"]["shape"] == [1 if fixed_batch else "batch", 1, 8, 8, 4]
    assert ("only takes a batch of 1" in caplog.text) is fixed_batch
    loaded = torch.jit.load(str(result.path))
    assert loaded(torch.randn(1, 1, 8, 8, 4)).shape == (1, 2, 8, 8, 4)


def test_onnx_fixed_size_fallback_checks_the_batch_axis(tmp_path):
    from medzoo.errors import ModelError
    from medzoo.export import export_network

    plan = _fixed_plan()
    result = export_network(_FixedSizes(fixed_batch=False).eval(), plan, tmp_path / "ok.onnx")
    card = json.loads(result.card_path.read_text())
    assert not result.dynamic_spatial and result.dynamic_batch and card["dynamic_axes"] == ["batch"]
    # a graph that takes neither another size nor another batch is not written (before: written, card "batch")
    with pytest.raises(ModelError, match="does not take a batch of 2"):
        export_network(_FixedSizes(fixed_batch=True).eval(), plan, tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists() and not (tmp_path / "bad.json").exists()
