"""The walking skeleton through the command line: phantom -> train -> predict -> evaluate.

Tiny phantoms on an oblique, anisotropic grid; asserts that every written prediction has its input's exact
shape and affine, and that evaluation reads them back and scores every case.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from medzoo.cli import main
from medzoo.io.readers import read_volume


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    data, run = root / "data", root / "run"
    assert main(["phantom", "--out", str(data), "--cases", "4", "--test-cases", "2",
                 "--shape", "26", "30", "22", "--seed", "3"]) == 0
    code = main([
        "train", "--data", str(data), "--out", str(run), "--model", "unet3d", "--epochs", "1",
        "--iterations", "3", "--batch-size", "2", "--patch-size", "16", "16", "16", "--no-progress",
        "--model-arg", "features=[8,16]",
    ])
    assert code == 0
    return data, run


def test_train_writes_a_complete_run_folder(trained_run):
    _, run = trained_run
    for name in ("plan.json", "config.json", "checkpoint_last.pt", "checkpoint_best.pt", "metrics.csv"):
        assert (run / name).is_file(), name
    plan = json.loads((run / "plan.json").read_text())
    assert plan["model"] == "unet3d"
    assert plan["labels"]["3"] == "white_matter"


def test_predict_keeps_each_inputs_grid_and_evaluate_scores_it(trained_run, tmp_path):
    data, run = trained_run
    pred = tmp_path / "pred"
    assert main(["predict", "--model", str(run), "--input", str(data / "imagesTs"), "--output", str(pred)]) == 0
    inputs = sorted((data / "imagesTs").glob("*.nii.gz"))
    assert len(inputs) == 2
    for image_path in inputs:
        image = read_volume(image_path)
        prediction = read_volume(pred / image_path.name)
        assert prediction.spatial_shape == image.spatial_shape
        np.testing.assert_allclose(prediction.affine, image.affine, atol=1e-5)
        assert not np.allclose(image.affine[:3, :3], np.diag(np.diag(image.affine[:3, :3])))  # oblique
        assert set(np.unique(prediction.array)) <= {0, 1, 2, 3}

    out = tmp_path / "eval.json"
    assert main(["evaluate", "--pred", str(pred), "--ref", str(data / "labelsTs"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert sorted(result["cases"]) == [p.name for p in inputs]
    assert out.with_suffix(".csv").is_file()


def test_evaluate_refuses_a_prediction_on_another_grid(trained_run, tmp_path, capsys):
    from medzoo.io.readers import write_volume
    from medzoo.io.volume import Volume

    data, _ = trained_run
    ref = sorted((data / "labelsTs").glob("*.nii.gz"))[0]
    label = read_volume(ref)
    shifted = label.affine.copy()
    shifted[:3, 3] += 5.0
    pred_dir = tmp_path / "pred"
    write_volume(Volume(label.array, shifted), pred_dir / ref.name)
    ref_dir = tmp_path / "ref"
    write_volume(label, ref_dir / ref.name)
    assert main(["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir)]) != 0
    err = capsys.readouterr().err
    assert ref.name in err and "Traceback" not in err


def test_bad_input_gives_one_line_and_nonzero_exit(tmp_path, capsys):
    bad = tmp_path / "scan.nii.gz"
    bad.write_text("not an image")
    code = main(["predict", "--model", str(tmp_path / "no_run"), "--input", str(bad), "--output",
                 str(tmp_path / "out")])
    assert code != 0
    err = capsys.readouterr().err.strip()
    assert err and "Traceback" not in err
