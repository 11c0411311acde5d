"""Files medzoo derives and can derive again heal: a truncated or garbage-filled copy is discarded with one
warning and rebuilt (or the step falls back), and the work goes on with correct results. A user's own
files (checkpoints, plans, model cards of ``medzoo export``) keep failing with a one-line error naming them."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from medzoo.errors import CheckpointError
from medzoo.inference import backends
from medzoo.inference.predictor import predict
from medzoo.io.readers import read_volume, write_volume
from support.inference import THRESHOLD, blob_image, make_run, register_threshold
from support.reliability import damage, rig_runtime_race, warnings_about

pytestmark = pytest.mark.usefixtures("fp32_on_cpu")


@pytest.fixture
def threshold_run(tmp_path, monkeypatch):
    """A run whose network labels ``image > 0`` (exports to ONNX in well under a second) and one scan; where
    predict races runtimes, OpenVINO wins, so every record of the cache is read again by later predictions."""
    register_threshold(monkeypatch)
    rig_runtime_race(monkeypatch, winner="openvino")
    run, _ = make_run(tmp_path / "run", THRESHOLD, 1, 2, patch_size=(8, 8, 8), normalization=["none"])
    image = blob_image(shape=(17, 13, 9))
    write_volume(image, tmp_path / "in" / "scan.nii.gz")
    return run, image


def _predict_ok(run, tmp_path, image, name):
    out = tmp_path / name
    report = predict(run, tmp_path / "in", out, progress=False, device="cpu")
    assert report.ok, report.failed
    got = read_volume(out / "scan.nii.gz")
    np.testing.assert_array_equal(got.array[0], (image.array[0] > 0).astype(np.uint8))
    np.testing.assert_allclose(got.affine, image.affine, atol=1e-5)


@pytest.mark.parametrize("how", ["truncate", "garbage"])
def test_every_file_of_the_export_cache_heals(threshold_run, tmp_path, caplog, how):
    run, image = threshold_run
    _predict_ok(run, tmp_path, image, "first")
    cache = run / backends.CACHE_DIR
    derived = sorted(p for p in cache.iterdir() if p.is_file())
    assert derived, "the first prediction left nothing in the export cache"
    for i, path in enumerate(derived):
        damage(path, how)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            _predict_ok(run, tmp_path, image, f"after_{i}")
        assert len(warnings_about(caplog, path.name)) == 1, (path.name, caplog.text)
        assert len(caplog.records) == len(warnings_about(caplog, path.name)), caplog.text  # nothing else warned
        assert sorted(p for p in cache.iterdir() if p.is_file()) == derived  # made again, nothing left over
    export = next(p for p in derived if p.suffix == ".onnx")
    assert backends._export_problem(export) is None


def test_a_damaged_failure_note_is_discarded_and_the_export_tried_again(threshold_run, tmp_path, caplog):
    run, image = threshold_run
    export = backends.cached_onnx_export(run)
    note = export.with_suffix(".failed")
    export.unlink()
    note.write_bytes(b"\xff\xfe\x00garbage")
    with caplog.at_level(logging.WARNING):
        assert backends.cached_onnx_export(run) == export
    assert len(warnings_about(caplog, note.name)) == 1 and not note.exists()
    assert backends._export_problem(export) is None


def test_an_export_that_does_not_match_its_recorded_sha256_is_made_again(threshold_run, caplog):
    run, _ = threshold_run
    export = backends.cached_onnx_export(run)
    whole = export.read_bytes()
    export.write_bytes(whole[:-1] + bytes([whole[-1] ^ 1]))  # one flipped bit, same size
    with caplog.at_level(logging.WARNING):
        assert backends.cached_onnx_export(run) == export
    assert export.read_bytes() == whole and "SHA-256" in caplog.text


def test_a_users_own_export_card_still_fails_with_one_line_naming_it(threshold_run, tmp_path):
    from medzoo.export import export_model

    run, _ = threshold_run
    result = export_model(run, "onnx", out=tmp_path / "mine" / "model.onnx")
    damage(result.card_path, "garbage")
    with pytest.raises(CheckpointError, match="model.json: not a valid medzoo model card") as err:
        backends.load_backend(result.path, backend="onnxruntime", device="cpu")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("how", ["truncate", "garbage"])
def test_a_damaged_checkpoint_fails_with_one_line_naming_it(threshold_run, tmp_path, how):
    run, _ = threshold_run
    damage(run / "checkpoint_best.pt", how)
    with pytest.raises(CheckpointError, match="checkpoint_best.pt") as err:
        backends.load_backend(run, backend="torch", device="cpu")
    assert "\n" not in str(err.value)

