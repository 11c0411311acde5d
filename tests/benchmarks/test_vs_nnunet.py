"""benchmarks.vs_nnunet: the nnU-Net schedule, the shared split, the raw folder and the scoring (no training)."""

from __future__ import annotations

import json
import shutil
import sys

import nibabel as nib
import numpy as np
import pytest

from benchmarks import nnunet_worker, vs_nnunet

PROBE = {"setup_s": 10.0, "step_s": 6.0, "val_step_s": 2.0, "epoch_overhead_s": 1.0}


def _msd(root, cases: int = 6):
    """A one-channel MSD dataset of small random volumes, labels 0/1/2, as Task04_Hippocampus is laid out."""
    rng = np.random.default_rng(0)
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    training = []
    for i in range(cases):
        name = f"hippocampus_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(rng.normal(size=(8, 9, 7)).astype(np.float32), np.eye(4)), root / "imagesTr" / name)
        nib.save(nib.Nifti1Image(rng.integers(0, 3, (8, 9, 7)).astype(np.uint8), np.eye(4)), root / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {"name": "Hippocampus", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "Anterior",
            "2": "Posterior"}, "numTraining": cases, "training": training, "test": []}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.mark.parametrize("budget", [30.0, 300.0, 600.0, 1800.0, 36000.0])
def test_schedule_fits_the_budget(budget):
    s = vs_nnunet.nnunet_schedule(budget, PROBE)
    assert s["predicted_s"] <= budget * vs_nnunet.BUDGET_SHARE + 1e-6
    assert s["epochs"] >= 1 and s["iterations"] >= 1 and s["val_iterations"] >= 1


def test_schedule_keeps_nnunets_epochs_when_ten_fit_and_cuts_them_otherwise():
    long = vs_nnunet.nnunet_schedule(36000.0, PROBE)  # 10 epochs of 250 at 6.4 s: 16 000 s fit
    assert (long["iterations"], long["val_iterations"]) == (250, 50) and long["epochs"] >= 10
    short = vs_nnunet.nnunet_schedule(600.0, PROBE)
    assert short["epochs"] == vs_nnunet.MIN_EPOCHS and 1 <= short["iterations"] < 250
    assert short["val_iterations"] == max(1, round(short["iterations"] / 5))
    # nearly all of the budget is used: one more iteration per epoch would not fit
    more = PROBE["setup_s"] + short["epochs"] * ((short["iterations"] + 1) * 6.0 + 2.0 * (short["iterations"] + 1) / 5 + 1)
    assert more > 600.0 * vs_nnunet.BUDGET_SHARE
    tiny = vs_nnunet.nnunet_schedule(30.0, PROBE)
    assert tiny["iterations"] == 1 and tiny["epochs"] == 2  # 19 s after the start-up: two 9-s epochs


def test_both_tools_get_medzoos_fold_zero_and_the_same_files(tmp_path):
    data = _msd(tmp_path / "msd")
    folds = vs_nnunet.fold_splits(data)
    from medzoo.engine.splits import make_splits

    ids = [f"hippocampus_{i:03d}" for i in range(6)]
    assert folds == make_splits(ids, folds=5, seed=0)  # what `medzoo train --folds 5 --fold 0` trains on
    assert vs_nnunet.nnunet_splits(folds)[0] == {"train": folds[0]["train"], "val": folds[0]["val"]}
    raw = vs_nnunet.write_nnunet_raw(data, tmp_path / "raw")
    meta = json.loads((raw / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "Anterior": 1, "Posterior": 2} and meta["numTraining"] == 6
    assert meta["channel_names"] == {"0": "MRI"} and meta["file_ending"] == ".nii.gz"
    assert sorted(p.name for p in (raw / "imagesTr").iterdir())[0] == "hippocampus_000_0000.nii.gz"
    assert (raw / "labelsTr" / "hippocampus_005.nii.gz").resolve() == (data / "labelsTr" / "hippocampus_005.nii.gz").resolve()
    subset = vs_nnunet.subset_dataset(data, tmp_path, 5)
    assert [c["train"] + c["val"] for c in vs_nnunet.fold_splits(subset)][0].__len__() == 5
    assert vs_nnunet.subset_dataset(data, tmp_path, None) == data


def test_score_folder_uses_the_original_grids(tmp_path):
    data = _msd(tmp_path / "msd")
    pred = tmp_path / "pred"
    pred.mkdir()
    ids = ["hippocampus_001", "hippocampus_002"]
    for cid in ids:
        shutil.copy(data / "labelsTr" / f"{cid}.nii.gz", pred / f"{cid}.nii.gz")
    perfect = vs_nnunet.score_folder(pred, data, ids)
    assert perfect["dice_mean"] == 1.0 and perfect["dice_Anterior"] == 1.0 and perfect["cases"] == 2
    nib.save(nib.Nifti1Image(np.zeros((8, 9, 7), np.uint8), np.eye(4)), pred / f"{ids[0]}.nii.gz")
    assert vs_nnunet.score_folder(pred, data, ids)["dice_Posterior"] == pytest.approx(0.5)
    nib.save(nib.Nifti1Image(np.zeros((8, 9, 6), np.uint8), np.eye(4)), pred / f"{ids[0]}.nii.gz")
    with pytest.raises(ValueError, match="grid"):
        vs_nnunet.score_folder(pred, data, ids)


def test_skips_without_the_data_or_with_unknown_tools(tmp_path, monkeypatch):
    monkeypatch.setattr(vs_nnunet, "hippocampus_dir", lambda: None)
    res = vs_nnunet.main(["--quick", "--out", str(tmp_path)])
    assert "Task04_Hippocampus" in res["skipped"] and res["rows"] == []
    assert json.loads((tmp_path / "vs_nnunet.json").read_text())["skipped"]
    with pytest.raises(SystemExit):
        vs_nnunet.main(["--tools", "medzoo,monai", "--out", str(tmp_path)])


def test_the_worker_keeps_timm_and_torchvision_out(monkeypatch):
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    for name in [m for m in sys.modules if m.split(".")[0] in nnunet_worker.BLOCKED]:
        monkeypatch.delitem(sys.modules, name)
    nnunet_worker.keep_out()
    nnunet_worker.keep_out()  # idempotent
    assert sum(isinstance(f, nnunet_worker.KeepOut) for f in sys.meta_path) == 1
    for name in ("timm", "torchvision.ops"):
        with pytest.raises(ImportError, match="kept out"):
            __import__(name)
