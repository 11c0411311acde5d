"""The default prediction backend ("auto"): a fixed rule, no timing. On the CPU, OpenVINO through one cached
export per checkpoint (checked against PyTorch on the outputs' scale), PyTorch where it predicts in bf16."""

from __future__ import annotations

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
    export_checks,
    load_backend,
    outputs_agree,
    resolve_backend,
)
from medzoo.inference.predictor import Predictor, predict
from medzoo.io.readers import read_volume, write_volume
from support.inference import blob_image, make_run, pretend_native_bf16  # noqa: F401 - fp32_on_cpu: a fixture

pytestmark = pytest.mark.usefixtures("fp32_on_cpu")  # equal precision on any CPU (see the fixture)

needs_openvino = pytest.mark.skipif(not backends._installed("openvino"), reason="openvino is not installed")


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


def _cache(run) -> list[str]:
    return sorted(p.name for p in (run / ".medzoo_cache").iterdir())


def test_onnxruntime_predicts_with_a_cached_onnx_export_and_the_same_labels_as_torch(run, tmp_path):
    import onnx

    image = blob_image(shape=(29, 21, 13), spacing=(0.9, 1.4, 2.5))
    write_volume(image, tmp_path / "in" / "scan.nii.gz")
    small = blob_image(shape=(12, 9, 7), seed=1)  # smaller than the patch on every axis: padded windows
    write_volume(small, tmp_path / "in" / "small.nii.gz")
    ort = predict(run, tmp_path / "in", tmp_path / "ort", progress=False, device="cpu", backend="onnxruntime")
    (export,) = (run / ".medzoo_cache").iterdir()  # one cache file: the export, its checks inside
    assert ort.ok and export.suffix == ".onnx"
    first_mtime = export.stat().st_mtime_ns

    again = predict(run, tmp_path / "in", tmp_path / "ort2", progress=False, device="cpu", backend="onnxruntime")
    assert again.ok and list((run / ".medzoo_cache").iterdir()) == [export]
    assert export.stat().st_mtime_ns == first_mtime  # reused, not exported again

    torch_report = predict(run, tmp_path / "in", tmp_path / "torch", progress=False, device="cpu", backend="torch")
    assert torch_report.ok and len(ort.written) == 2
    for name, scan in (("scan.nii.gz", image), ("small.nii.gz", small)):
        ours, ref = read_volume(tmp_path / "ort" / name), read_volume(tmp_path / "torch" / name)
        np.testing.assert_array_equal(ours.array, ref.array)
        assert ours.spatial_shape == scan.spatial_shape
        np.testing.assert_allclose(ours.affine, scan.affine, atol=1e-5)
        assert len(np.unique(ref.array)) > 1  # a real comparison: the untrained net predicts several classes
    dims = onnx.load(str(export)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value or d.dim_param for d in dims] == ["batch", 1, 16, 16, 8]  # fixed to the window


def test_auto_is_a_rule_openvino_on_the_cpu_pytorch_in_bf16_or_on_a_gpu(run, monkeypatch):
    onnx_file = cached_onnx_export(run)
    assert resolve_backend("auto", run, "cuda") == "torch"
    assert resolve_backend("auto", onnx_file, "cuda") == "onnxruntime"
    assert resolve_backend("torch", run, "cpu") == "torch"
    assert resolve_backend("auto", run, "cpu", amp="bf16") == "torch"  # only PyTorch runs bf16
    with pytest.raises(ConfigError, match="unknown backend"):
        resolve_backend("tensorrt", run, "cpu")
    if backends._installed("openvino"):
        assert resolve_backend("auto", run, "cpu") == resolve_backend("auto", run, "cpu", amp="auto") == "openvino"
        assert resolve_backend("auto", onnx_file, "cpu") == "openvino"
        pretend_native_bf16(monkeypatch, True)  # an AMX / AVX512-BF16 CPU: PyTorch predicts in bf16 there
        assert resolve_backend("auto", run, "cpu", amp="auto") == "torch"
        assert resolve_backend("auto", run, "cpu", amp="none") == "openvino"
    _without(monkeypatch, "openvino")
    assert resolve_backend("auto", run, "cpu") == "torch"  # ONNX Runtime is no fallback for a run folder
    assert isinstance(load_backend(run, backend="auto", device="cpu")[0], torch.nn.Module)
    assert resolve_backend("auto", onnx_file, "cpu") == "onnxruntime"  # PyTorch cannot run an .onnx file
    with pytest.raises(ConfigError, match="needs the openvino package"):
        load_backend(run, backend="openvino", device="cpu")


@needs_openvino
def test_openvino_labels_differ_from_torch_only_at_near_ties(run):
    image = blob_image(shape=(29, 21, 13), spacing=(0.9, 1.4, 2.5))
    model, plan = load_backend(run, backend="auto", device="cpu")
    assert isinstance(model, OpenVinoModel)
    (export,) = (run / ".medzoo_cache").iterdir()
    verdict = export_checks(export)["openvino"]  # checked against PyTorch when the export was made
    assert verdict["ok"] and verdict["max_abs_diff"] <= verdict["allowed"] and verdict["equal_labels"] > 0.99
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
def test_openvino_failing_its_check_falls_back_to_torch_and_the_verdict_is_kept(run, monkeypatch):
    monkeypatch.setattr(backends, "OPENVINO_TOLERANCE", -1.0)  # nothing can pass
    model, _ = load_backend(run, backend="auto", device="cpu")
    assert isinstance(model, torch.nn.Module)
    with pytest.raises(CheckpointError, match="OpenVINO differs"):
        load_backend(run, backend="openvino", device="cpu")

    def no_second_check(*args):
        raise AssertionError("the verdict is stored in the export; no second check")

    monkeypatch.setattr(backends, "_check_openvino", no_second_check)
    assert isinstance(load_backend(run, backend="auto", device="cpu")[0], torch.nn.Module)
    assert len(_cache(run)) == 1
    # an .onnx file cannot go to PyTorch: ONNX Runtime runs it
    assert isinstance(load_backend(cached_onnx_export(run), backend="auto", device="cpu")[0], OnnxModel)


@needs_openvino
def test_a_window_grown_by_the_size_rule_is_checked_at_the_size_the_export_takes(tmp_path):
    # unet3d with two levels needs sizes divisible by 2: the patch is grown to 16x16x8 for the network
    run, _ = make_run(tmp_path / "run", "unet3d", 1, 3, patch_size=(15, 16, 7), model_kwargs={"features": [4, 8]})
    model, _ = load_backend(run, backend="openvino", device="cpu")
    assert isinstance(model, OpenVinoModel)
    assert export_checks(cached_onnx_export(run))["openvino"]["ok"]


def test_checks_between_runtimes_are_on_the_scale_of_the_outputs():
    want = 50.0 * torch.randn(2, 3, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    assert outputs_agree(want + 1.01e-4, want, 1e-4)["ok"]  # large logits: float rounding is not an error
    assert not outputs_agree(want + 1.0, want, 1e-4)["ok"]
    small = torch.full((1, 2, 3), 0.01)
    assert not outputs_agree(small + 1.01e-4, small, 1e-4)["ok"]  # small logits: the floor of 1 applies
    assert not outputs_agree(want[:1], want, 1.0)["ok"]  # shapes differ


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
        calls.append(kwargs.get("dynamic_spatial"))
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr("medzoo.export.export_network", broken_export)
    if backends._installed("openvino"):
        with pytest.raises(ConfigError, match="could not be exported"):
            load_backend(run, backend="openvino", device="cpu")  # asked for explicitly: an error
        assert calls == [False, True]  # fixed-size axes, then size-generic ones
        (marker,) = (run / ".medzoo_cache").glob("*.failed")
        assert "unsupported operator" in marker.read_text()
        assert _cache(run) == [marker.name]  # the one cache file
    model, plan = load_backend(run, backend="auto", device="cpu")
    assert isinstance(model, torch.nn.Module) and plan.model == "unet3d"
    model, _ = load_backend(run, backend="auto", device="cpu")
    assert isinstance(model, torch.nn.Module)
    assert len(calls) == (2 if backends._installed("openvino") else 0)  # the failure is remembered


def test_a_damaged_cached_export_is_made_again_with_one_warning(run, caplog):
    path = cached_onnx_export(run)
    path.write_bytes(b"not an onnx file")
    with caplog.at_level("WARNING", logger="medzoo"):
        again = cached_onnx_export(run)
    assert again == path and export_checks(path) is not None
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 1
    assert _cache(run) == [path.name]


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
    if backends._installed("openvino"):
        auto_model, _ = load_backend(run, backend="auto", device="cpu")
        assert auto_model.path.parent == run / ".medzoo_cache"  # auto takes the export keyed by checkpoint
        assert isinstance(load_backend(run / "model.onnx", backend="openvino")[0], OpenVinoModel)  # checked here


def test_a_run_with_the_cache_files_of_the_old_race_still_predicts(run, tmp_path):
    cache = run / ".medzoo_cache"
    cache.mkdir()
    for name, text in {"model_0123456789ab.onnx": "old export", "model_0123456789ab.json": "{",
                       "model_0123456789ab.openvino.json": '{"ok": true}', "model_0123456789ab.race.json": "[]",
                       "model_ba9876543210.failed": "old failure"}.items():  # fmt: skip
        (cache / name).write_text(text)
    write_volume(blob_image(shape=(20, 17, 9)), tmp_path / "in" / "scan.nii.gz")
    report = predict(run, tmp_path / "in", tmp_path / "out", progress=False, device="cpu")
    assert report.ok and read_volume(tmp_path / "out" / "scan.nii.gz").spatial_shape == (20, 17, 9)


@needs_openvino
def test_predict_runs_pytorch_in_bf16_where_native_and_openvino_in_fp32_otherwise(run, tmp_path, monkeypatch):
    image = blob_image(shape=(29, 21, 13), spacing=(0.9, 1.4, 2.5))
    write_volume(image, tmp_path / "in" / "scan.nii.gz")
    seen: list[type] = []
    real = backends.load_backend

    def spy(*args, **kwargs):
        model, plan = real(*args, **kwargs)
        seen.append(type(model))
        return model, plan

    monkeypatch.setattr(backends, "load_backend", spy)
    assert predict(run, tmp_path / "in", tmp_path / "bf16", progress=False, device="cpu", amp="bf16").ok
    assert predict(run, tmp_path / "in", tmp_path / "fp32", progress=False, device="cpu").ok
    pretend_native_bf16(monkeypatch, True)  # an AMX / AVX512-BF16 CPU
    assert predict(run, tmp_path / "in", tmp_path / "native", progress=False, device="cpu").ok
    assert [issubclass(t, torch.nn.Module) for t in seen] == [True, False, True]
    assert seen[1] is OpenVinoModel
    bf16 = read_volume(tmp_path / "native" / "scan.nii.gz")
    fp32 = read_volume(tmp_path / "fp32" / "scan.nii.gz")
    assert bf16.spatial_shape == image.spatial_shape and np.allclose(bf16.affine, image.affine, atol=1e-5)
    assert (bf16.array == fp32.array).mean() > 0.99  # bf16 moves labels only at near-ties
