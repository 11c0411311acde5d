"""predict() and `medzoo predict`: files and folders in, label maps out with the inputs' geometry."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from medzoo.cli import main
from medzoo.errors import ConfigError
from medzoo.inference.predictor import collect_cases, predict
from medzoo.io.readers import read_volume, write_volume
from medzoo.io.volume import Volume
from support.inference import THRESHOLD, blob_image, make_run, register_threshold


@pytest.fixture
def run(tmp_path, monkeypatch):
    register_threshold(monkeypatch)
    run_dir, _ = make_run(
        tmp_path / "run", THRESHOLD, 2, 2, patch_size=(8, 8, 8), normalization=["none", "none"],
        modalities=["t1", "t2"],
    )  # fmt: skip
    return run_dir


def _inputs(folder):
    """Three good cases in three styles and one corrupt file."""
    a = blob_image(shape=(14, 11, 9), channels=2, seed=1)
    b = blob_image(shape=(10, 13, 7), channels=2, seed=2, spacing=(0.7, 1.9, 1.1))
    c = blob_image(shape=(9, 8, 12), channels=2, seed=3)
    folder.mkdir()
    write_volume(a, folder / "alpha.nii.gz")
    write_volume(b.with_array(b.array[:1]), folder / "beta_0000.nii.gz")
    write_volume(b.with_array(b.array[1:]), folder / "beta_0001.nii.gz")
    write_volume(c, folder / "gamma.nrrd")
    (folder / "broken.nii.gz").write_bytes(b"\x1f\x8b this is not a gzip stream")
    (folder / "dataset.json").write_text("{}")
    return {"alpha.nii.gz": a, "beta.nii.gz": b, "gamma.nrrd": c}


def test_collect_cases_groups_channel_files(tmp_path):
    _inputs(tmp_path / "in")
    cases = {c.name: c for c in collect_cases(tmp_path / "in")}
    assert sorted(cases) == ["alpha", "beta", "broken", "gamma"]
    assert [p.name for p in cases["beta"].paths] == ["beta_0000.nii.gz", "beta_0001.nii.gz"]
    assert cases["beta"].output_name == "beta.nii.gz" and cases["gamma"].output_name == "gamma.nrrd"


def test_cli_predicts_a_folder_and_lists_the_bad_file(run, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="medzoo")
    expected = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    code = main(["predict", "--model", str(run), "--input", str(tmp_path / "in"), "--output", str(out),
                 "--no-progress", "--save-probabilities"])
    captured = capsys.readouterr()
    err = captured.err
    assert code == 1
    assert "broken" in err and "1 case(s) failed" in err
    assert f"wrote 3/4 label map(s) to {out}" in captured.out  # the one summary line: not logged as well
    assert not [r for r in caplog.records if "case(s) into" in r.getMessage() and r.levelno >= logging.INFO]
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([*expected, "alpha_probabilities.npz", "beta_probabilities.npz",
                            "gamma_probabilities.npz"])  # nothing for the broken file, no temp files
    for name, image in expected.items():
        pred = read_volume(out / name)
        assert pred.spatial_shape == image.spatial_shape
        np.testing.assert_allclose(pred.affine, image.affine, atol=1e-4)
        np.testing.assert_array_equal(pred.array[0], (image.array[0] > 0).astype(np.uint8))
    probs = np.load(out / "beta_probabilities.npz")
    assert probs["probabilities"].dtype == np.float16 and probs["probabilities"].shape == (2, 10, 13, 7)
    np.testing.assert_allclose(probs["affine"], expected["beta.nii.gz"].affine)


def test_single_file_and_wrong_modality_count(run, tmp_path):
    image = blob_image(shape=(12, 9, 8), channels=2)
    write_volume(image, tmp_path / "scan.nii.gz")
    one = blob_image(shape=(12, 9, 8), channels=1)
    write_volume(one, tmp_path / "folder" / "mono.nii.gz")
    write_volume(image, tmp_path / "folder" / "duo.nii.gz")
    report = predict(run, tmp_path / "scan.nii.gz", tmp_path / "out1", progress=False)
    assert report.ok and [p.name for p in report.written] == ["scan.nii.gz"]
    report = predict(run, tmp_path / "folder", tmp_path / "out2", progress=False, tta=True, keep_largest=True)
    assert [p.name for p in report.written] == ["duo.nii.gz"]
    assert len(report.failed) == 1 and report.failed[0][0] == "mono"
    assert "1 channel(s)" in report.failed[0][1] and "2 modalities" in report.failed[0][1]


def test_2d_file_for_a_3d_model_is_a_clear_failure(run, tmp_path):
    flat = Volume(np.ones((2, 12, 10), np.float32), np.diag([0.5, 0.7, 1.0, 1.0]))
    write_volume(flat, tmp_path / "flat.nii.gz")
    report = predict(run, tmp_path / "flat.nii.gz", tmp_path / "out", progress=False)
    assert not report.ok and "2D" in report.failed[0][1]
    assert not (tmp_path / "out" / "flat.nii.gz").exists()


def test_failed_write_leaves_nothing_behind(run, tmp_path, monkeypatch):
    import medzoo.io.readers as readers

    write_volume(blob_image(shape=(12, 9, 8), channels=2), tmp_path / "scan.nii.gz")

    def half_write(volume, tmp):
        tmp.write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(readers, "_write_nifti", half_write)
    report = predict(run, tmp_path / "scan.nii.gz", tmp_path / "out", progress=False)
    assert not report.ok and "disk full" in report.failed[0][1]
    assert list((tmp_path / "out").iterdir()) == []


def test_refuses_to_overwrite_the_input(run, tmp_path):
    write_volume(blob_image(shape=(12, 9, 8), channels=2), tmp_path / "scan.nii.gz")
    with pytest.raises(ConfigError, match="overwrite the input"):
        predict(run, tmp_path / "scan.nii.gz", tmp_path, progress=False)
