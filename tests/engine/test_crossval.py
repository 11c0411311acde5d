"""Cross-validation over the one trainer: fold folders, resuming, the budget split, out-of-fold scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medzoo.engine import crossval
from medzoo.engine.config import TrainConfig
from medzoo.engine.splits import load_splits
from medzoo.errors import ConfigError
from support.clock import FakeClock

SHAPE = (24, 28, 20)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    from medzoo.data.phantom import make_phantom_dataset

    return make_phantom_dataset(tmp_path_factory.mktemp("phantom"), cases=5, seed=0, shape=SHAPE)


def _config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), model="unet3d", model_kwargs={"features": [4, 8]}, epochs=1,
                iterations_per_epoch=2, batch_size=2, patch_size=(16, 16, 16), progress=False, device="cpu",
                num_workers=0, log_images=False, final_tta=False, folds=2)
    base.update(kw)
    return TrainConfig(**base)


def test_cross_validation_scores_every_case_out_of_fold_and_resumes(phantom, tmp_path, monkeypatch, capsys):
    from medzoo.cli import main

    run = tmp_path / "cv"
    assert main(["train", "--data", str(phantom), "--out", str(run), "--model", "unet3d", "--model-arg",
                 "features=[4, 8]", "--epochs", "1", "--iterations", "2", "--batch-size", "2", "--patch-size",
                 "16", "16", "16", "--device", "cpu", "--num-workers", "0", "--no-progress", "--no-final-tta",
                 "--folds", "2", "--fold", "all"]) == 0
    printed = capsys.readouterr().out
    assert "Dice over cases" in printed and "crossval.json" in printed
    report = json.loads((run / "crossval.json").read_text())
    assert report["folds"] == [0, 1]
    for fold in (0, 1):
        assert (run / f"fold_{fold}" / "checkpoint_best.pt").is_file()
        for cid in load_splits(run / f"fold_{fold}" / "splits.json")[fold]["val"]:
            assert report["cases"][cid]["fold"] == fold  # predicted by the fold that did not train on it
            assert (run / f"fold_{fold}" / "validation" / f"{cid}.nii.gz").is_file()
    assert len(report["cases"]) == 5 and (run / "postprocessing.json").is_file()
    assert main(["info", str(run)]) == 0  # the parent folder describes itself: folds, their status, the table
    described = capsys.readouterr().out
    assert "kind: cross-validation" in described and "fold 1: status trained" in described
    assert crossval.load_crossval(run).table().splitlines()[0] in described
    for c in ("1", "2", "3"):
        cases = [v["dice"][c] for v in report["cases"].values() if v["dice"][c] is not None]
        assert report["summary"]["dice"][c]["mean_over_cases"] == pytest.approx(np.mean(cases), abs=1e-5)
    # a second call trains nothing (every fold has its result) and evaluates again
    monkeypatch.setattr("medzoo.engine.trainer.train", lambda *a, **k: pytest.fail("trained a finished fold"))
    again = crossval.cross_validate(_config(phantom, run))
    assert sorted(again.cases) == sorted(report["cases"])


def test_interrupted_fold_resumes_and_missing_folds_train(phantom, tmp_path, monkeypatch):
    run = tmp_path / "cv"
    (run / "fold_0").mkdir(parents=True)
    (run / "fold_0" / "checkpoint_last.pt").write_bytes(b"")
    (run / "fold_1").mkdir()
    (run / "fold_1" / crossval.RESULT_FILE).write_text("{}")
    calls = []

    def fake_train(config, resume=False):
        calls.append((Path(config.out).name, config.fold, resume, config.cache_dir))
        raise RuntimeError("stop here")

    monkeypatch.setattr("medzoo.engine.trainer.train", fake_train)
    with pytest.raises(RuntimeError, match="stop here"):
        crossval.cross_validate(_config(phantom, run, folds=3))
    assert calls == [("fold_0", 0, True, str(run / "cache"))]  # fold 1 is done; fold 0 resumes first


def test_budget_is_for_the_whole_command_and_split_across_folds(monkeypatch):
    clock = FakeClock().install(monkeypatch, crossval)
    started = clock.now
    share = crossval._fold_budget(100.0, started, 4)
    assert share == pytest.approx(100.0 * (1 - crossval.EVALUATION_SHARE) / 4)
    # later folds share what is left: a fold that finished early hands its time on
    clock.advance(30.0)
    assert crossval._fold_budget(100.0, started, 2) == pytest.approx((90.0 - 30.0) / 2)
    assert crossval._fold_budget(None, started, 3) is None
    with pytest.raises(ConfigError, match="time budget leaves"):
        crossval._fold_budget(20.0, started, 5)


def test_fold_arguments(phantom, tmp_path):
    from medzoo.cli.train import _folds

    assert _folds(["all"], 5) == [0, 1, 2, 3, 4] and _folds(["0", "3"], 5) == [0, 3] and _folds(["2"], 1) == [2]
    with pytest.raises(ConfigError):
        _folds(["all"], 1)
    with pytest.raises(ConfigError):
        _folds(["x"], 5)
    with pytest.raises(ConfigError, match="not in 0..1"):
        crossval.cross_validate(_config(phantom, tmp_path / "r"), folds=[0, 2])
