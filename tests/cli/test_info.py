"""``medzoo info`` on a run folder, a ``.medzoo`` file and a cross-validation parent: data, plan, training, Dice,
versions, predict."""

from __future__ import annotations

import json

import pytest

from medzoo.cli import main
from medzoo.errors import CheckpointError
from medzoo.info import run_info
from medzoo.packaging import pack_model
from support.inference import make_run

METRICS = """epoch,train_loss,lr,val_dice_mean,val_dice_liver,val_dice_tumour,seconds
1,0.9,0.01,0.50,0.60,0.40,10
2,0.8,0.009,,,,20
3,0.7,0.008,0.70,0.80,0.60,30
4,0.6,0.007,0.65,0.85,0.45,40
"""


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDZOO_MODEL_CACHE", str(tmp_path / "model_cache"))
    run_dir, _ = make_run(tmp_path / "run", "unet3d", 2, 3, model_kwargs={"features": [4, 8]},
                          patch_size=(16, 16, 16), target_spacing=(1.0, 1.0, 2.5),
                          normalization=["zscore", "ct"], modalities=["T1", "CT"],
                          labels={0: "background", 1: "liver", 2: "tumour"})
    (run_dir / "config.json").write_text(json.dumps({"data": "/data/Task03_Liver", "layout": "msd",
                                                     "task": "segment", "time_budget": 600, "amp": "auto"}))
    (run_dir / "metrics.csv").write_text(METRICS)
    (run_dir / "splits.json").write_text(json.dumps({"folds": [{"train": ["a", "b", "c"], "val": ["d"]}],
                                                     "fold": 0}))
    return run_dir


def test_run_info_describes_data_plan_training_and_predict(run):
    info = run_info(run)
    assert info["source"]["kind"] == "run folder"
    assert info["data"] == {"dataset": "/data/Task03_Liver", "layout": "msd", "task": "segment",
                            "modalities": ["T1", "CT"], "labels": {"0": "background", "1": "liver", "2": "tumour"},
                            "training_cases": 3, "validation_cases": 1}
    plan = info["plan"]
    assert (plan["network"], plan["patch_size"], plan["target_spacing"]) == ("unet3d", [16, 16, 16], [1.0, 1.0, 2.5])
    assert plan["normalization"] == ["zscore", "ct"]
    training = info["training"]
    assert (training["epochs"], training["steps"], training["best_epoch"]) == (1, 1, 3)
    assert training["best_dice"] == {"mean": 0.7, "liver": 0.8, "tumour": 0.6}
    assert training["final_dice"] == {"mean": 0.65, "liver": 0.85, "tumour": 0.45}
    assert "torch" in info["versions"]["installed"] and info["versions"]["packed_with"] is None
    predict = info["predict"]
    assert predict["checkpoint"] == "checkpoint_best.pt" and predict["device"] in ("cpu", "cuda")
    assert predict["precision"] in ("fp32", "bf16", "fp16") and predict["backend"]
    json.dumps(info)  # JSON-ready


def test_info_reads_a_packed_model_like_its_run(run, tmp_path):
    packed = pack_model(run, tmp_path / "model.medzoo")
    info, reference = run_info(packed), run_info(run)
    assert info["source"]["kind"] == "packed model" and info["source"]["packed_checkpoint"] == "best"
    for section in ("data", "plan", "training"):
        assert info[section] == reference[section], section
    assert info["versions"]["packed_with"]["torch"] == reference["versions"]["installed"]["torch"]


def test_info_command_prints_readably_or_as_json(run, capsys):
    assert main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    assert "network: unet3d" in out and "patch size: 16 x 16 x 16" in out
    assert "best dice: mean 0.7, liver 0.8, tumour 0.6" in out
    assert main(["info", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["plan"]["network"] == "unet3d"


def test_info_on_something_else_is_one_line_error(tmp_path, capsys):
    with pytest.raises(CheckpointError, match="not found"):
        run_info(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    assert main(["info", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "plan" in err


def _crossval_parent(parent, post: bool = True):
    """A cross-validation of 3 folds: fold 0 trained, fold 1 interrupted, fold 2 not started; out-of-fold
    scores of folds 0 and 1 in crossval.json, and a post-processing decision."""
    from medzoo.engine.crossval import CrossValResult
    from medzoo.inference.postprocess import ChosenPostprocessing

    labels = {0: "background", 1: "liver", 2: "tumour"}
    for fold in (0, 1):
        fold_dir, _ = make_run(parent / f"fold_{fold}", "unet3d", 1, 3, model_kwargs={"features": [4, 8]},
                               patch_size=(16, 16, 16), labels=labels)
        (fold_dir / "config.json").write_text(json.dumps({"data": "/data/Task03_Liver", "folds": 3, "fold": fold}))
        (fold_dir / "splits.json").write_text(json.dumps({"folds": [{"train": ["c", "d"], "val": ["a", "b"]},
                                                                    {"train": ["a", "b"], "val": ["c", "d"]}],
                                                          "fold": fold}))
    (parent / "fold_0" / "train_result.json").write_text(json.dumps({
        "fold": 0, "epochs": 40, "steps": 800, "best_metric": 0.81, "best_epoch": 38, "seconds": 300.0,
        "stop_reason": "time_budget"}))
    result = CrossValResult(parent, [0, 1], {1: "liver", 2: "tumour"})
    for cid, fold, liver, tumour in (("a", 0, 0.9, 0.5), ("b", 0, 0.8, float("nan")), ("c", 1, 0.7, 0.6),
                                     ("d", 1, 0.6, 0.4)):
        result.cases[cid] = {"fold": fold, "dice": {1: liver, 2: tumour},
                             "dice_postprocessed": {1: liver + 0.01, 2: tumour}}
    if post:
        chosen = ChosenPostprocessing(foreground=True, dice_before={1: 0.75, 2: 0.5}, dice_after={1: 0.76, 2: 0.5})
        result.postprocessing = chosen.to_dict()
        chosen.save(parent / "postprocessing.json")
    (parent / "crossval.json").write_text(json.dumps(result.to_dict()))
    return parent, result


def test_info_on_a_cross_validation_lists_folds_scores_and_postprocessing(tmp_path):
    parent, result = _crossval_parent(tmp_path / "cv")
    info = run_info(parent)
    assert info["source"]["kind"] == "cross-validation" and info["source"]["folds"] == 3
    assert info["data"]["dataset"] == "/data/Task03_Liver" and info["data"]["cases"] == 4
    assert info["plan"]["network"] == "unet3d"
    folds = info["folds"]
    assert folds["fold_0"] == {"status": "trained", "epochs": 40, "steps": 800, "best_metric": 0.81,
                               "best_epoch": 38, "seconds": 300.0, "stop_reason": "time_budget"}
    assert folds["fold_1"]["status"] == "interrupted" and folds["fold_1"]["epochs"] == 1
    assert folds["fold_2"] == {"status": "not started"}
    scores = info["crossval"]
    assert scores["folds"] == ["fold_0", "fold_1"] and scores["cases"] == 4
    assert scores["summary"]["dice"]["1"]["mean_over_cases"] == pytest.approx(0.75)
    assert scores["summary"]["dice"]["2"]["mean_over_cases"] == pytest.approx(0.5)  # the NaN case left out
    assert scores["table"] == result.table()
    assert info["postprocessing"]["decision"] == "largest foreground component"
    assert info["predict"]["members"] == ["fold_0", "fold_1"]
    assert info["predict"]["postprocessing"].startswith("applied")
    json.dumps(info)  # JSON-ready


def test_info_command_on_a_cross_validation_prints_the_table(tmp_path, capsys):
    parent, result = _crossval_parent(tmp_path / "cv")
    assert main(["info", str(parent)]) == 0
    out = capsys.readouterr().out
    assert "kind: cross-validation" in out and "fold 2: status not started" in out
    assert "fold 0: status trained, epochs 40" in out
    for line in result.table().splitlines():
        assert f"    {line}" in out
    assert "decision: largest foreground component" in out
    assert main(["info", str(parent), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["folds"]["fold_1"]["status"] == "interrupted"


def test_info_on_a_cross_validation_still_training_says_what_is_missing(tmp_path):
    parent, _ = _crossval_parent(tmp_path / "cv", post=False)
    (parent / "crossval.json").write_text('{"folds": [0, 1], "cases": {"a": {}}}')  # damaged: written again later
    assert run_info(parent)["crossval"]["file"] is None
    (parent / "crossval.json").unlink()
    info = run_info(parent)
    assert info["crossval"]["file"] is None and "--fold all" in info["crossval"]["note"]
    assert info["postprocessing"]["decision"] is None and info["predict"]["postprocessing"] == "none"
    assert [f["status"] for f in info["folds"].values()] == ["trained", "interrupted", "not started"]
