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
from support.inference import blob_image, make_run, pretend_native_bf16  # noqa: F401 - fp32_on_cpu: a fixture

pytestmark = pytest.mark.usefixtures("fp32_on_cpu")  # equal precision on any CPU (see the fixture)


@pytest.fixture
def run(tmp_path):
    run_dir, _ = make_run(
        tmp_path / "run", "unet3d", 1, 3, patch_size=(16, 16, 8), model_kwargs={"features": [4, 8]},
        labels={0: "background", 1: "a", 2: "b"}, normalization=["zscore"],
    )  # fmt: skip
    return run_dir


def _rig_race(monkeypatch, openvino_s: float, torch_s: float) -> list[str]:
    """Make the OpenVINO-against-PyTorch race deterministic: each side's timed call takes the given seconds.
    Returns the list of sides timed, in order."""
    from medzoo.inference import race

    timed: list[str] = []

    def fake_time_call(model, x):
        side = "torch" if isinstance(model, torch.nn.Module) else "openvino"
        assert side == "torch" or isinstance(model, OpenVinoModel)
        timed.append(side)
        return torch_s if side == "torch" else openvino_s

    monkeypatch.setattr(race, "time_call", fake_time_call)
    return timed


@pytest.fixture
def openvino_wins(monkeypatch):
    """The race, where these tests want OpenVINO from "auto", picks it whatever this machine measures."""
    _rig_race(monkeypatch, openvino_s=1.0, torch_s=2.0)


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


def test_auto_picks_openvino_then_torch_on_cpu_and_torch_on_gpu(run, monkeypatch, openvino_wins):
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
def test_openvino_labels_differ_from_torch_only_at_near_ties(run, tmp_path, openvino_wins):
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


def test_onnxruntime_on_a_run_folder_uses_the_cached_export_unless_medzoo_export_wrote_one(run, openvino_wins):
    from medzoo.export import export_model

    model, _ = load_backend(run, backend="onnxruntime", device="cpu")
    assert isinstance(model, OnnxModel) and model.path.parent == run / ".medzoo_cache"
    export_model(run, "onnx")  # RUN/model.onnx, written by the user
    model, _ = load_backend(run, backend="onnxruntime", device="cpu")
    assert model.path == run / "model.onnx"
    auto_model, _ = load_backend(run, backend="auto", device="cpu")  # OpenVINO or ONNX Runtime
    assert auto_model.path.parent == run / ".medzoo_cache"  # auto always takes the export keyed by checkpoint


@needs_openvino
def test_auto_races_openvino_against_torch_once_and_predicts_with_the_faster(run, tmp_path, monkeypatch):
    timed = _rig_race(monkeypatch, openvino_s=1.0, torch_s=0.5)  # PyTorch twice as fast
    model, plan = load_backend(run, backend="auto", device="cpu", batch_size=3)
    assert isinstance(model, torch.nn.Module) and not model.training
    assert next(model.parameters()).is_contiguous(memory_format=torch.channels_last_3d)  # unet3d's card layout
    assert timed == ["openvino", "torch"] * 3  # one untimed call each, then two clear rounds
    (record,) = (run / ".medzoo_cache").glob("*.race.json")
    race = json.loads(record.read_text())[backends.race_key(3)]
    assert race["winner"] == "torch" and race["batch_size"] == 3 and race["torch_layout"] == "channels_last"
    assert (race["openvino_s"], race["torch_s"]) == (1.0, 0.5)

    def no_openvino(*args, **kwargs):
        raise AssertionError("the recorded winner is PyTorch: OpenVINO is not compiled again")

    with monkeypatch.context() as patch:
        patch.setattr(backends, "OpenVinoModel", no_openvino)
        patch.setattr("medzoo.inference.race.race_runtimes", no_openvino)
        again, _ = load_backend(run, backend="auto", device="cpu", batch_size=3)
    assert isinstance(again, torch.nn.Module) and len(timed) == 6
    # predict() races the batch size it predicts with; its labels are PyTorch's
    image = blob_image(shape=(29, 21, 13), spacing=(0.9, 1.4, 2.5))
    write_volume(image, tmp_path / "in" / "scan.nii.gz")
    assert predict(run, tmp_path / "in", tmp_path / "auto", progress=False, device="cpu", batch_size=2).ok
    assert sorted(json.loads(record.read_text())) == sorted(backends.race_key(b) for b in (2, 3))
    assert predict(run, tmp_path / "in", tmp_path / "torch", progress=False, device="cpu", backend="torch").ok
    ours = read_volume(tmp_path / "auto" / "scan.nii.gz")
    np.testing.assert_array_equal(ours.array, read_volume(tmp_path / "torch" / "scan.nii.gz").array)
    np.testing.assert_allclose(ours.affine, image.affine, atol=1e-5)


@needs_openvino
def test_a_near_tie_keeps_openvino_and_only_a_close_race_gets_a_third_round(run, monkeypatch):
    from medzoo.inference.race import TORCH_MARGIN

    timed = _rig_race(monkeypatch, openvino_s=1.0, torch_s=1.0 / (TORCH_MARGIN * 0.99))  # not quite enough
    model, _ = load_backend(run, backend="auto", device="cpu")
    assert isinstance(model, OpenVinoModel)
    assert timed == ["openvino", "torch"] * 4  # warm-up, then three rounds: two were too close to call
    race = json.loads(next((run / ".medzoo_cache").glob("*.race.json")).read_text())
    assert race[backends.race_key(4)]["winner"] == "openvino"
    assert isinstance(load_backend(run, backend="auto", device="cpu")[0], OpenVinoModel) and len(timed) == 8


@needs_openvino
def test_the_race_is_auto_only_and_a_record_that_cannot_be_written_is_not_an_error(run, monkeypatch):
    timed = _rig_race(monkeypatch, openvino_s=1.0, torch_s=0.1)
    assert isinstance(load_backend(run, backend="openvino", device="cpu")[0], OpenVinoModel)
    assert isinstance(load_backend(cached_onnx_export(run), backend="auto", device="cpu")[0], OpenVinoModel)
    assert timed == [] and not list((run / ".medzoo_cache").glob("*.race.json"))  # asked for, or no network

    def full_disk(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr("medzoo.utils.atomic_write_text", full_disk)
    assert isinstance(load_backend(run, backend="auto", device="cpu")[0], torch.nn.Module)
    assert isinstance(load_backend(run, backend="auto", device="cpu")[0], torch.nn.Module)
    assert len(timed) == 12  # nothing recorded: raced again, and PyTorch won again


@needs_openvino
def test_race_times_the_real_runtimes_on_the_batch_the_window_feeds(run):
    from medzoo.inference.race import race_runtimes

    ov_model, plan = load_backend(run, backend="openvino", device="cpu")
    torch_model, _ = load_backend(run, backend="torch", device="cpu")
    result = race_runtimes(ov_model, torch_model.eval(), torch.randn(2, 1, *plan.patch_size))
    assert result["winner"] in ("openvino", "torch")
    assert 0 < result["openvino_s"] < 60 and 0 < result["torch_s"] < 60


@needs_openvino
def test_a_run_folder_moved_to_another_cpu_races_again(run, monkeypatch):
    timed = _rig_race(monkeypatch, openvino_s=1.0, torch_s=0.5)
    assert isinstance(load_backend(run, backend="auto", device="cpu")[0], torch.nn.Module) and len(timed) == 6
    assert isinstance(load_backend(run, backend="auto", device="cpu")[0], torch.nn.Module) and len(timed) == 6
    monkeypatch.setattr(backends, "_cpu_model", lambda: "Another CPU @ 1.0GHz")
    _rig_race(monkeypatch, openvino_s=0.5, torch_s=1.0)  # where OpenVINO is the faster
    assert isinstance(load_backend(run, backend="auto", device="cpu")[0], OpenVinoModel)
    record = json.loads(next((run / ".medzoo_cache").glob("*.race.json")).read_text())
    assert len(record) == 2 and {r["winner"] for r in record.values()} == {"torch", "openvino"}


@needs_openvino
def test_auto_with_amp_bf16_predicts_with_torch_without_racing(run, tmp_path, monkeypatch):
    timed = _rig_race(monkeypatch, openvino_s=0.1, torch_s=1.0)  # OpenVINO would win a race
    asked = []
    real = backends.load_backend
    monkeypatch.setattr(backends, "load_backend", lambda *a, **k: asked.append(k["backend"]) or real(*a, **k))
    write_volume(blob_image(shape=(29, 21, 13), spacing=(0.9, 1.4, 2.5)), tmp_path / "in" / "scan.nii.gz")
    assert predict(run, tmp_path / "in", tmp_path / "bf16", progress=False, device="cpu", amp="bf16").ok
    assert asked == ["torch"] and timed == []
    assert predict(run, tmp_path / "in", tmp_path / "fp32", progress=False, device="cpu").ok
    assert asked == ["torch", "auto"] and len(timed) > 0  # without bf16: the race, which OpenVINO wins


@needs_openvino
def test_on_a_cpu_with_native_bf16_the_race_times_pytorch_in_bf16_and_predict_runs_it_so(run, tmp_path, monkeypatch):
    pretend_native_bf16(monkeypatch, True)  # an AMX / AVX512-BF16 CPU
    from medzoo.inference import race

    autocast_seen = []
    _rig_race(monkeypatch, openvino_s=1.0, torch_s=0.5)  # PyTorch (bf16) twice as fast

    rigged = race.time_call

    def spy(model, x):  # the race's PyTorch side must run under bf16 autocast
        if isinstance(model, torch.nn.Module):
            with torch.inference_mode():
                autocast_seen.append(model(x).dtype)
        return rigged(model, x)

    monkeypatch.setattr(race, "time_call", spy)
    image = blob_image(shape=(29, 21, 13), spacing=(0.9, 1.4, 2.5))
    write_volume(image, tmp_path / "in" / "scan.nii.gz")
    assert predict(run, tmp_path / "in", tmp_path / "auto", progress=False, device="cpu", batch_size=2).ok
    assert autocast_seen and set(autocast_seen) == {torch.bfloat16}
    (record,) = (run / ".medzoo_cache").glob("*.race.json")
    races = json.loads(record.read_text())
    assert list(races) == [backends.race_key(2, torch.bfloat16)] and races[backends.race_key(2, torch.bfloat16)][
        "torch_precision"] == "bf16"
    # amp "none" races fp32 PyTorch, recorded apart: a bf16 verdict does not decide for fp32
    assert predict(run, tmp_path / "in", tmp_path / "fp32", progress=False, device="cpu", batch_size=2,
                   amp="none").ok
    races = json.loads(record.read_text())
    assert sorted(races) == sorted([backends.race_key(2, torch.bfloat16), backends.race_key(2)])
    assert races[backends.race_key(2)]["torch_precision"] == "fp32"
    bf16 = read_volume(tmp_path / "auto" / "scan.nii.gz")
    fp32 = read_volume(tmp_path / "fp32" / "scan.nii.gz")
    assert bf16.spatial_shape == image.spatial_shape and np.allclose(bf16.affine, image.affine, atol=1e-5)
    assert (bf16.array == fp32.array).mean() > 0.99  # bf16 moves labels only at near-ties
