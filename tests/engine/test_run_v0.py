"""A run folder written before the trainer was reshaped (``tests/fixtures/run_v0``, made by
``tests/fixtures/make_run_v0.py``) still predicts, resumes and evaluates with today's code."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RUN_V0, CASE_V0 = FIXTURES / "run_v0", FIXTURES / "run_v0_case"


@pytest.fixture
def run_v0(tmp_path) -> Path:
    """A copy of the fixture run (prediction and resume write into the run folder)."""
    return Path(shutil.copytree(RUN_V0, tmp_path / "run_v0"))


def _predict(run: Path, out: Path) -> Path:
    from medzoo.inference.predictor import predict

    report = predict(run, CASE_V0 / "input.nii.gz", out, backend="torch", amp="none", memory_format="contiguous",
                     progress=False, device="cpu")  # fmt: skip
    assert not report.failed
    return out / "input.nii.gz"


def test_run_v0_predicts_the_labels_it_predicted_when_it_was_made(run_v0, tmp_path):
    from medzoo.io.readers import read_volume

    got = read_volume(_predict(run_v0, tmp_path / "pred"))
    want = read_volume(CASE_V0 / "expected_labels.nii.gz")
    np.testing.assert_allclose(got.affine, read_volume(CASE_V0 / "input.nii.gz").affine)
    assert got.array.shape == want.array.shape
    np.testing.assert_array_equal(got.array, want.array)
    assert len(np.unique(want.array)) > 1  # a map of one class would prove little


def test_run_v0_resumes_for_its_second_epoch(run_v0, tmp_path, monkeypatch):
    from medzoo import train
    from medzoo.data.phantom import make_phantom_dataset
    from medzoo.engine.config import TrainConfig

    # the run's config names its data relatively ("phantom"); the same phantom is made beside it
    config = json.loads((run_v0 / "config.json").read_text())
    assert config["data"] == "phantom" and config["epochs"] == 2
    make_phantom_dataset(tmp_path / "phantom", cases=4, seed=3, shape=(24, 24, 16), test_cases=1)
    monkeypatch.chdir(tmp_path)
    result = train(TrainConfig.load(Path("run_v0") / "config.json"), resume=True)
    assert (result.epochs, result.steps) == (2, 4)
    ckpt = torch.load(run_v0 / "checkpoint_last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"]) == (2, 4)
    with (run_v0 / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert rows[0]["train_loss"] == "2.19862"  # the first session's row is kept as it was
    assert rows[1]["val_dice_mean"] != ""


def test_run_v0_predictions_evaluate(run_v0, tmp_path, capsys):
    from medzoo.cli import main

    pred = _predict(run_v0, tmp_path / "pred")
    ref = tmp_path / "ref"
    ref.mkdir()
    shutil.copy(CASE_V0 / "expected_labels.nii.gz", ref / pred.name)
    out = tmp_path / "eval" / "scores.json"
    assert main(["evaluate", "--pred", str(pred.parent), "--ref", str(ref), "--out", str(out)]) == 0
    assert "1 case(s)" in capsys.readouterr().out
    scores = json.loads(out.read_text())["cases"][pred.name]
    assert set(scores) == {"2", "3"}  # the foreground labels the run predicts
    assert all(scores[k]["dice"] == 1.0 for k in scores)  # its own recorded labels as the reference
