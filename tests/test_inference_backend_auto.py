"""The default prediction backend ("auto"): OpenVINO or ONNX Runtime on the CPU, through an export cached per
checkpoint and checked against PyTorch."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from medzoo.errors import CheckpointError, ConfigError
from medzoo.inference import backends
from medzoo.inference.backends import (
    OnnxModel,
    OpenVinoModel,
    cached_onnx_export,
    load_backend,
    resolve_backend,
)
from medzoo.inference.predictor import Predictor, predict
from medzoo.io.readers import read_volume, write_volume
from test_inference_helpers import blob_image, make_run


@pytest.fixture
def run(tmp_path):
    run_dir, _ = make_run(
        tmp_path / "run", "unet3d", 1, 3, patch_size=(16, 16, 8), model_kwargs={"features": [4, 8]},
        labels={0: "background", 1: "a", 2: "b"}, normalization=["zscore"],
    )  # fmt: skip
    return run_dir


def _without(monkeypatch, *missing: str) -> None:
    """Pretend these packages are not installed (for the backend choice)."""
    real = backends._installed
    monkeypatch.setattr(backends, "_installed", lambda *names: not set(names) & set(missing) and real(*names))


def test_onnxruntime_predicts_with_a_cached_onnx_export_and_the_same_labels_as_torch(run, tmp_path):
    # ONNX Runtime (asked for: auto goes to OpenVINO or PyTorch): labels identical to PyTorch's here
    image = blob_image(shape=(29, 21, 13), spacing=(0.9, 1.4, 2.5))
    write_volume(image, tmp_path / "in" / "scan.nii.gz")
    small = blob_image(shape=(12, 9, 7), seed=1)  # smaller than the patch on every axis: padded windows
    write_volume(small, tmp_path / "in" / "small.nii.gz")
    auto = predict(run, tmp_path / "in", tmp_path / "auto", progress=False, device="cpu", backend="onnxruntime")
    exports = sorted((run / ".medzoo_cache").glob("model_*.onnx"))
    assert auto.ok and len(exports) == 1 and exports[0].with_suffix(".json").is_file()
    first_mtime = exports[0].stat().st_mtime_ns

    again = predict(run, tmp_path / "in", tmp_path / "auto2", progress=False, device="cpu", backend="onnxruntime")
    assert again.ok and sorted((run / ".medzoo_cache").glob("model_*.onnx")) == exports
    assert exports[0].stat().st_mtime_ns == first_mtime  # reused, not exported again

    torch_report = predict(run, tmp_path / "in", tmp_path / "torch", progress=False, device="cpu", backend="torch")
    assert torch_report.ok and len(auto.written) == 2
    for name, scan in (("scan.nii.gz", image), ("small.nii.gz", small)):
        ours, ref = read_volume(tmp_path / "auto" / name), read_volume(tmp_path / "torch" / name)
        np.testing.assert_array_equal(ours.array, ref.array)
        assert ours.spatial_shape == scan.spatial_shape
        np.testing.assert_allclose(ours.affine, scan.affine, atol=1e-5)
        assert len(np.unique(ref.array)) > 1  # a real comparison: the untrained net predicts several classes
    card = json.loads(exports[0].with_suffix(".json").read_text())
    assert card["dynamic_axes"] == ["batch"] and card["patch_size"] == [16, 16, 8]


def test_auto_picks_openvino_then_torch_on_cpu_and_torch_on_gpu(run, monkeypatch):
    if backends._installed("openvino"):
        model, _ = load_backend(run, backend="auto", device="cpu")
        assert isinstance(model, OpenVinoModel)
        assert resolve_backend("auto", run, "cpu") == "openvino"
    assert resolve_backend("auto", run, "cuda") == "torch"
    assert resolve_backend("torch", run, "cpu") == "torch"
    onnx_file = cached_onnx_export(run)
    assert resolve_backend("auto", onnx_file, "cuda") == "onnxruntime"
    with pytest.raises(ConfigError, match="unknown backend"):
        resolve_backend("tensorrt", run, "cpu")
    _without(monkeypatch, "openvino")
    # ONNX Runtime measured 1.2-2.3x slower than PyTorch on the CPU: not a fallback for run folders
    assert resolve_backend("auto", run, "cpu") == "torch"
    assert isinstance(load_backend(run, backend="auto", device="cpu")[0], torch.nn.Module)
    assert resolve_backend("auto", onnx_file, "cpu") == "onnxruntime"  # PyTorch cannot run an .onnx file
    _without(monkeypatch, "openvino", "onnxruntime")
    assert resolve_backend("auto", run, "cpu") == "torch"
    with pytest.raises(ConfigError, match="needs the openvino package"):
        load_backend(run, backend="openvino", device="cpu")


needs_openvino = pytest.mark.skipif(not backends._installed("openvino"), reason="openvino is not installed")


@needs_openvino
def test_openvino_labels_differ_from_torch_only_at_near_ties(run, tmp_path):
    image = blob_image(shape=(29, 21, 13), spacing=(0.9, 1.4, 2.5))
    model, plan = load_backend(run, backend="auto", device="cpu")
    assert isinstance(model, OpenVinoModel)
    record = sorted((run / ".medzoo_cache").glob("*.openvino.json"))
    assert len(record) == 1 and json.loads(record[0].read_text())["ok"]
    ours = Predictor(model, plan).predict_volume(image)
    reference = Predictor.from_run(run, device="cpu")
    labels, probs = reference.predict_case(image, probabilities=True)
    np.testing.assert_allclose(ours.affine, image.affine, atol=1e-5)
    assert ours.spatial_shape == image.spatial_shape and len(np.unique(labels.array)) > 1
    differ = ours.array[0] != labels.array[0]
    top2 = np.sort(probs.array.astype(np.float32), axis=0)[-2:]
    assert differ.mean() < 1e-3
    assert np.all(top2[1][differ] - top2[0][differ] < 1e-2), "labels differ away from a near-tie"


@needs_openvino
def test_openvino_failing_its_check_falls_back_to_torch(run, monkeypatch):
    monkeypatch.setattr(backends, "OPENVINO_TOLERANCE", -1.0)  # nothing can pass
    model, _ = load_backend(run, backend="auto", device="cpu")
    assert isinstance(model, torch.nn.Module)
    with pytest.raises(CheckpointError, match="OpenVINO differs"):
        load_backend(run, backend="openvino", device="cpu")

    def no_second_check(*args):
        raise AssertionError("the verdict is recorded; no second check")

    monkeypatch.setattr(backends, "_check_openvino", no_second_check)
    assert isinstance(load_backend(run, backend="auto", device="cpu")[0], torch.nn.Module)
    # an .onnx file cannot go to PyTorch: ONNX Runtime runs it
    assert isinstance(load_backend(cached_onnx_export(run), backend="auto", device="cpu")[0], OnnxModel)


def test_a_new_checkpoint_gets_a_new_export(run):
    first = cached_onnx_export(run)
    ckpt = run / "checkpoint_best.pt"
    stat = ckpt.stat()
    os.utime(ckpt, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a rewritten checkpoint
    second = cached_onnx_export(run)
    assert first != second and first.is_file() and second.is_file()


def test_a_network_that_does_not_export_falls_back_to_torch_once(run, monkeypatch):
    if backends._installed("openvino"):
        with monkeypatch.context() as patch, pytest.raises(ConfigError, match="could not be exported"):
            patch.setattr("medzoo.export.export_model", _failing_export)
            load_backend(run, backend="openvino", device="cpu")  # asked for explicitly: an error
        for marker in (run / ".medzoo_cache").glob("*.failed"):
            marker.unlink()
    calls = []

    def broken_export(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr("medzoo.export.export_model", broken_export)
    model, plan = load_backend(run, backend="auto", device="cpu")
    assert isinstance(model, torch.nn.Module) and plan.model == "unet3d"
    assert len(list((run / ".medzoo_cache").glob("*.failed"))) == 1
    assert len(calls) == 2  # fixed-size axes, then size-generic ones
    model, _ = load_backend(run, backend="auto", device="cpu")
    assert isinstance(model, torch.nn.Module) and len(calls) == 2  # the failure is remembered


def _failing_export(*args, **kwargs):
    raise RuntimeError("unsupported operator")


def test_an_unwritable_run_folder_exports_to_a_temporary_folder(run):
    (run / ".medzoo_cache").write_text("not a folder")  # the cache folder cannot be created
    path = cached_onnx_export(run)
    assert path is not None and path.is_file() and run not in path.parents
    assert (run / ".medzoo_cache").read_text() == "not a folder"


def test_onnxruntime_on_a_run_folder_uses_the_cached_export_unless_medzoo_export_wrote_one(run):
    from medzoo.export import export_model

    model, _ = load_backend(run, backend="onnxruntime", device="cpu")
    assert isinstance(model, OnnxModel) and model.path.parent == run / ".medzoo_cache"
    export_model(run, "onnx")  # RUN/model.onnx, written by the user
    model, _ = load_backend(run, backend="onnxruntime", device="cpu")
    assert model.path == run / "model.onnx"
    auto_model, _ = load_backend(run, backend="auto", device="cpu")  # OpenVINO or ONNX Runtime
    assert auto_model.path.parent == run / ".medzoo_cache"  # auto always takes the export keyed by checkpoint
