"""Classification: ROC AUC against hand-computed values, CSV reading, training on an easy synthetic task."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest

from medzoo.engine.checkpoint import load_model_from_run
from medzoo.engine.classify import read_classification_csv, roc_auc
from medzoo.engine.config import TrainConfig
from medzoo.engine.trainer import train
from medzoo.errors import DataError


def test_roc_auc_binary_with_ties():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(0.875)  # a tie counts one half
    assert roc_auc([1, 1, 0], [0.9, 0.8, 0.1]) == 1.0
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))
    # (N, 2) probabilities use the second column
    assert roc_auc([0, 1], np.array([[0.7, 0.3], [0.2, 0.8]])) == 1.0


def test_roc_auc_one_vs_rest_macro():
    labels = np.array([0, 1, 2, 0, 1, 2])
    perfect = np.eye(3)[labels] * 0.8 + 0.1
    assert roc_auc(labels, perfect) == pytest.approx(1.0)
    scores = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6], [0.3, 0.4, 0.3], [0.1, 0.8, 0.1],
                       [0.3, 0.3, 0.4]])
    expected = np.mean([roc_auc((labels == k).astype(int), scores[:, k]) for k in range(3)])
    assert roc_auc(labels, scores) == pytest.approx(expected)
    assert roc_auc(labels, scores) < 1.0


def _write_dataset(root, n=20, shape=(12, 14, 10), seed=0):
    rng = np.random.default_rng(seed)
    affine = np.array([[0.0, 1.2, 0.1, 5.0], [0.9, 0.0, 0.0, -3.0], [0.0, 0.1, 2.0, 1.0], [0, 0, 0, 1]])
    rows = []
    for i in range(n):
        label = "yes" if i % 2 else "no"
        img = rng.normal(0, 1, shape).astype(np.float32)
        if label == "yes":  # a bright blob somewhere inside
            c = rng.integers(3, np.array(shape) - 3)
            img[c[0] - 2 : c[0] + 2, c[1] - 2 : c[1] + 2, c[2] - 2 : c[2] + 2] += 6.0
        name = f"vol_{i:02d}.nii.gz"
        nib.save(nib.Nifti1Image(img, affine), str(root / name))
        rows.append({"case_id": f"s{i:02d}", "image": name, "label": label})
    path = root / "labels.csv"
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["case_id", "image", "label"])
        w.writeheader()
        w.writerows(rows)
    return path


def test_read_csv_and_errors(tmp_path):
    path = _write_dataset(tmp_path, n=4)
    table = read_classification_csv(path)
    assert table.class_values == ["no", "yes"] and table.modalities == ["image"]
    assert table.targets == {"s00": 0, "s01": 1, "s02": 0, "s03": 1}
    bad = tmp_path / "bad.csv"
    bad.write_text("image,label\nvol_00.nii.gz,1\nvol_01.nii.gz,1\n")
    with pytest.raises(DataError, match="same label"):
        read_classification_csv(bad)


def test_classifier_learns_an_easy_task(tmp_path):
    path = _write_dataset(tmp_path, n=20)
    result = train(TrainConfig(
        data=str(path), out=str(tmp_path / "run"), task="classify", model_kwargs={"channels": [8, 16]},
        patch_size=(12, 12, 12), batch_size=8, epochs=6, iterations_per_epoch=4, lr=3e-3, progress=False,
        device="cpu", val_every=2, seed=0,
    ))
    assert result.final_metrics["val_accuracy"] >= 0.75
    assert result.best_metric >= 0.75
    assert result.final_metrics["val_auc"] >= 0.75
    with (tmp_path / "run" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and rows[1]["val_accuracy"] != "" and rows[0]["val_accuracy"] == ""
    model, plan = load_model_from_run(tmp_path / "run")
    assert plan.model == "simple3dcnn" and plan.labels == {0: "no", 1: "yes"}
