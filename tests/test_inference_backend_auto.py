"""The default prediction backend ("auto"): ONNX Runtime on the CPU through an export cached per checkpoint."""

from __future__ import annotations

import os

import numpy as np
import pytest

from medzoo.errors import ConfigError
from medzoo.inference import backends
from medzoo.inference.backends import OnnxModel, cached_onnx_export, load_backend, resolve_backend
from medzoo.inference.predictor import predict
from medzoo.io.readers import read_volume, write_volume
from test_inference_helpers import blob_image, make_run


@pytest.fixture
def run(tmp_path):
    run_dir, _ = make_run(
        tmp_path / "run", "unet3d", 1, 3, patch_size=(16, 16, 8), model_kwargs={"features": [4, 8]},
        labels={0: "background", 1: "a", 2: "b"}, normalization=["zscore"],
    )  # fmt: skip
    return run_dir


def test_auto_predicts_with_a_cached_onnx_export_and_the_same_labels_as_torch(run, tmp_path):
    image = blob_image(shape=(29, 21, 13), spacing=(0.9, 1.4, 2.5))
    write_volume(image, tmp_path / "in" / "scan.nii.gz")
    auto = predict(run, tmp_path / "in", tmp_path / "auto", progress=False, device="cpu")
    exports = sorted((run / ".medzoo_cache").glob("model_*.onnx"))
    assert auto.ok and len(exports) == 1 and exports[0].with_suffix(".json").is_file()
    first_mtime = exports[0].stat().st_mtime_ns

    again = predict(run, tmp_path / "in", tmp_path / "auto2", progress=False, device="cpu")
    assert again.ok and sorted((run / ".medzoo_cache").glob("model_*.onnx")) == exports
    assert exports[0].stat().st_mtime_ns == first_mtime  # reused, not exported again

    torch_report = predict(run, tmp_path / "in", tmp_path / "torch", progress=False, device="cpu", backend="torch")
    assert torch_report.ok
    ours, ref = read_volume(tmp_path / "auto" / "scan.nii.gz"), read_volume(tmp_path / "torch" / "scan.nii.gz")
    np.testing.assert_array_equal(ours.array, ref.array)
    assert ours.spatial_shape == image.spatial_shape
    np.testing.assert_allclose(ours.affine, image.affine, atol=1e-5)
    assert len(np.unique(ref.array)) > 1  # a real comparison: the untrained net predicts more than one class


def test_auto_picks_onnxruntime_on_cpu_only(run, tmp_path, monkeypatch):
    model, _ = load_backend(run, backend="auto", device="cpu")
    assert isinstance(model, OnnxModel)
    assert resolve_backend("auto", run, "cuda") == "torch"
    assert resolve_backend("torch", run, "cpu") == "torch"
    onnx_file = cached_onnx_export(run)
    assert resolve_backend("auto", onnx_file, "cpu") == "onnxruntime"
    with pytest.raises(ConfigError, match="unknown backend"):
        resolve_backend("tensorrt", run, "cpu")
    monkeypatch.setattr(backends.importlib.util, "find_spec", lambda name: None)  # onnxruntime not installed
    assert resolve_backend("auto", run, "cpu") == "torch"


def test_a_new_checkpoint_gets_a_new_export(run):
    first = cached_onnx_export(run)
    ckpt = run / "checkpoint_best.pt"
    stat = ckpt.stat()
    os.utime(ckpt, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a rewritten checkpoint
    second = cached_onnx_export(run)
    assert first != second and first.is_file() and second.is_file()


def test_a_network_that_does_not_export_falls_back_to_torch_once(run, monkeypatch):
    calls = []

    def broken_export(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr("medzoo.export.export_model", broken_export)
    model, plan = load_backend(run, backend="auto", device="cpu")
    assert not isinstance(model, OnnxModel) and plan.model == "unet3d"
    assert len(list((run / ".medzoo_cache").glob("*.failed"))) == 1
    model, _ = load_backend(run, backend="auto", device="cpu")
    assert not isinstance(model, OnnxModel) and len(calls) == 1  # the failure is remembered


def test_an_unwritable_run_folder_exports_to_a_temporary_folder(run):
    (run / ".medzoo_cache").write_text("not a folder")  # the cache folder cannot be created
    path = cached_onnx_export(run)
    assert path is not None and path.is_file() and run not in path.parents
    assert (run / ".medzoo_cache").read_text() == "not a folder"
