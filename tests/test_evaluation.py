"""Folder evaluation: pairing, geometry checks, JSON/CSV content, label names, report and CLI."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from scipy import ndimage

from medzoo.cli import main as cli_main
from medzoo.errors import DataError
from medzoo.evaluation import evaluate, label_names_from_dataset_json, pair_files
from medzoo.io.readers import write_volume
from medzoo.io.volume import Volume, make_affine
from medzoo.metrics import compute_case_metrics

SPACING = (0.8, 1.1, 2.0)
SHAPE = (20, 18, 12)


def _oblique_affine(spacing=SPACING):
    a = np.deg2rad(20)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    return make_affine(spacing, origin=(-10.0, 5.0, 3.0), rotation=rot)


def _labels(seed):
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((3, *SHAPE)), sigma=(0, 2, 2, 1.5))
    field[0] += 0.1
    return field.argmax(0).astype(np.uint8)


def _make_folders(tmp_path, n=3, image=False):
    pred_dir, ref_dir, img_dir = tmp_path / "pred", tmp_path / "ref", tmp_path / "img"
    affine = _oblique_affine()
    arrays = {}
    for i in range(n):
        name = f"case_{i:03d}.nii.gz"
        ref = _labels(i)
        pred = np.where(np.random.default_rng(50 + i).random(SHAPE) < 0.9 - 0.2 * i, ref, _labels(100 + i))
        pred = pred.astype(np.uint8)
        write_volume(Volume(ref[None], affine), ref_dir / name)
        write_volume(Volume(pred[None], affine), pred_dir / name)
        if image:
            img = ndimage.gaussian_filter(ref.astype(np.float32), 1) + 0.1 * np.random.default_rng(i).random(SHAPE)
            write_volume(Volume(img[None].astype(np.float32), affine), img_dir / f"case_{i:03d}_0000.nii.gz")
        arrays[name] = (pred, ref)
    return pred_dir, ref_dir, img_dir, arrays


def test_evaluate_matches_case_metrics_and_writes_json_csv(tmp_path):
    pred_dir, ref_dir, _, arrays = _make_folders(tmp_path)
    out = tmp_path / "out" / "eval.json"
    res = evaluate(pred_dir, ref_dir, out_json=out, metrics=["dice", "hd95", "nsd"], workers=2)
    assert res.labels == {1: "label_1", 2: "label_2"}
    for name, (pred, ref) in arrays.items():
        expected = compute_case_metrics(pred, ref, [1, 2], SPACING, metrics=("dice", "hd95", "nsd"))
        for lab in (1, 2):
            for m in ("dice", "hd95", "nsd"):
                assert res.cases[name][lab][m] == pytest.approx(expected[lab][m], abs=1e-5)
    data = json.loads(out.read_text())
    dice1 = [res.cases[c][1]["dice"] for c in arrays]
    assert data["summary"]["per_class"]["label_1"]["dice"]["mean"] == pytest.approx(np.mean(dice1))
    assert data["summary"]["per_class"]["label_1"]["dice"]["std"] == pytest.approx(np.std(dice1))
    assert data["summary"]["per_class"]["label_1"]["dice"]["median"] == pytest.approx(np.median(dice1))
    assert data["mean_foreground"]["dice"] == data["summary"]["mean_foreground"]["dice"]
    assert data["mean_foreground"]["dice"] == pytest.approx(
        (data["summary"]["per_class"]["label_1"]["dice"]["mean"] + data["summary"]["per_class"]["label_2"]["dice"]["mean"]) / 2
    )
    assert data["worst_cases"][0] == res.worst_cases[0]
    # worst first by mean foreground Dice
    scores = [res.case_score(c) for c in res.worst_cases]
    assert scores == sorted(scores)
    rows = list(csv.DictReader((tmp_path / "out" / "eval.csv").open()))
    assert len(rows) == 3 * 2 and set(rows[0]) == {"case", "label", "name", "dice", "hd95", "nsd"}
    assert float(rows[0]["dice"]) == pytest.approx(res.cases[rows[0]["case"]][int(rows[0]["label"])]["dice"])
    table = res.table()
    assert "label_1" in table and "mean foreground" in table


def test_unmatched_files_are_listed(tmp_path):
    pred_dir, ref_dir, _, _ = _make_folders(tmp_path, n=2)
    (pred_dir / "case_001.nii.gz").rename(pred_dir / "other.nii.gz")
    with pytest.raises(DataError) as err:
        pair_files(pred_dir, ref_dir)
    msg = str(err.value)
    assert "case_001.nii.gz" in msg and "other.nii.gz" in msg


def test_geometry_mismatch_names_file(tmp_path):
    pred_dir, ref_dir, _, arrays = _make_folders(tmp_path, n=2)
    pred, _ = arrays["case_001.nii.gz"]
    write_volume(Volume(pred[None], _oblique_affine((0.8, 1.1, 2.01))), pred_dir / "case_001.nii.gz")
    with pytest.raises(DataError, match="case_001.nii.gz.*affine"):
        evaluate(pred_dir, ref_dir, workers=1)
    write_volume(Volume(pred[None, :-1], _oblique_affine()), pred_dir / "case_001.nii.gz")
    with pytest.raises(DataError, match="case_001.nii.gz.*shape"):
        evaluate(pred_dir, ref_dir, workers=2)


def test_labels_dataset_json_and_empty_classes(tmp_path):
    pred_dir, ref_dir, _, arrays = _make_folders(tmp_path, n=2)
    ds = tmp_path / "dataset.json"
    ds.write_text(json.dumps({"labels": {"0": "background", "1": "csf", "2": "gm", "3": "wm"}}))
    assert label_names_from_dataset_json(ds) == {0: "background", 1: "csf", 2: "gm", 3: "wm"}
    v2 = tmp_path / "v2.json"
    v2.write_text(json.dumps({"labels": {"background": 0, "tumour": 1, "whole": [1, 2]}}))
    assert label_names_from_dataset_json(v2) == {0: "background", 1: "tumour"}
    res = evaluate(pred_dir, ref_dir, out_json=tmp_path / "e.json", dataset_json=ds, metrics=["dice", "hd95"])
    assert res.labels == {1: "csf", 2: "gm", 3: "wm"}
    # label 3 is absent everywhere: the documented rule gives Dice 1 and HD95 0
    assert all(res.cases[c][3] == {"dice": 1.0, "hd95": 0.0} for c in arrays)
    # a class predicted where the reference has none -> inf HD95, written as null and counted
    name = "case_000.nii.gz"
    pred, ref = arrays[name]
    pred = pred.copy()
    pred[0, 0, 0] = 3
    write_volume(Volume(pred[None], _oblique_affine()), pred_dir / name)
    res = evaluate(pred_dir, ref_dir, out_json=tmp_path / "e2.json", labels={1: "a", 3: "c"}, metrics=["dice", "hd95"])
    assert math.isinf(res.cases[name][3]["hd95"]) and res.cases[name][3]["dice"] == 0.0
    data = json.loads((tmp_path / "e2.json").read_text())
    assert data["cases"][name]["3"]["hd95"] is None
    assert data["summary"]["per_class"]["c"]["hd95"]["n_infinite"] == 1 and data["summary"]["per_class"]["c"]["hd95"]["n"] == 1


def test_cli_evaluate_and_errors(tmp_path, capsys):
    pred_dir, ref_dir, img_dir, _ = _make_folders(tmp_path, n=2, image=True)
    out = tmp_path / "cli.json"
    code = cli_main(["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "--out", str(out),
                     "--labels", "1:csf", "2", "--metrics", "dice", "assd", "--workers", "1"])
    assert code == 0 and out.exists()
    printed = capsys.readouterr().out
    assert "csf" in printed and "assd" in printed
    assert json.loads(out.read_text())["labels"] == {"1": "csf", "2": "label_2"}
    code = cli_main(["evaluate", "--pred", str(pred_dir), "--ref", str(tmp_path / "nope")])
    assert code == 1
    assert "not a folder" in capsys.readouterr().err
    code = cli_main(["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "--metrics", "bogus"])
    assert code == 1 and "unknown metric" in capsys.readouterr().err


def test_report_written_with_images(tmp_path):
    pred_dir, ref_dir, img_dir, arrays = _make_folders(tmp_path, n=3, image=True)
    report = tmp_path / "report"
    res = evaluate(pred_dir, ref_dir, metrics=["dice", "hd95"], report_dir=report, images_dir=img_dir,
                   max_overlays=2)
    page = (report / "index.html").read_text()
    assert res.report_path == report / "index.html"
    assert "<script" not in page and "http://" not in page and "https://" not in page
    pngs = sorted(p.name for p in (report / "img").glob("*.png"))
    assert "box_dice.png" in pngs and "box_hd95.png" in pngs
    overlays = [p for p in pngs if p.startswith("case_")]
    assert len(overlays) == 2 and res.worst_cases[0].split(".")[0] in overlays[0]
    for png in pngs:
        assert f"img/{png}" in page
    # worst case is listed before the best in the table
    assert page.index(res.worst_cases[0]) < page.index(res.worst_cases[-1])


def test_evaluate_2d_files(tmp_path):
    affine = _oblique_affine((0.6, 1.4, 1.0))
    rng = np.random.default_rng(0)
    ref = (ndimage.gaussian_filter(rng.standard_normal((30, 26)), 2) > 0.1).astype(np.uint8)
    pred = ndimage.binary_dilation(ref).astype(np.uint8)
    write_volume(Volume(ref[None], affine), tmp_path / "r" / "slice.nii.gz")
    write_volume(Volume(pred[None], affine), tmp_path / "p" / "slice.nii.gz")
    res = evaluate(tmp_path / "p", tmp_path / "r", metrics=["dice", "hd95"])
    expected = compute_case_metrics(pred, ref, [1], (0.6, 1.4), metrics=("dice", "hd95"))
    assert res.cases["slice.nii.gz"][1] == pytest.approx(expected[1])
    assert res.spacings["slice.nii.gz"] == pytest.approx((0.6, 1.4))


def test_dataset_json_beside_the_references_names_the_classes(tmp_path):
    pred_dir, ref_dir, _, _ = _make_folders(tmp_path, n=2)  # tmp_path/ref: dataset.json would sit in tmp_path
    assert evaluate(pred_dir, ref_dir, metrics=["dice"], workers=1).labels == {1: "label_1", 2: "label_2"}
    (ref_dir.parent / "dataset.json").write_text("{not json")  # unreadable: ignored, default names
    assert evaluate(pred_dir, ref_dir, metrics=["dice"], workers=1).labels == {1: "label_1", 2: "label_2"}
    (ref_dir.parent / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "Anterior",
                                                                        "2": "Posterior"}}))
    assert evaluate(pred_dir, ref_dir, metrics=["dice"], workers=1).labels == {1: "Anterior", 2: "Posterior"}
    given = evaluate(pred_dir, ref_dir, metrics=["dice"], labels=[1], workers=1)  # explicit labels win
    assert given.labels == {1: "label_1"}


# ----------------------------------------------------------------------------------- regions, ignore label
def _brats_pair(tmp_path):
    ref = np.zeros((10, 9, 8), np.uint8)
    ref[1:8, 1:8, 1:7] = 2  # edema
    ref[3:6, 3:6, 2:5] = 1  # necrosis inside
    ref[4:5, 4:5, 3:4] = 4  # enhancing inside that
    pred = ref.copy()
    pred[1:8, 1:8, 6] = 0  # misses a slab of edema: only WT loses
    aff = _oblique_affine()
    write_volume(Volume(pred[None], aff), tmp_path / "pred" / "c1.nii.gz")
    write_volume(Volume(ref[None], aff), tmp_path / "ref" / "c1.nii.gz")
    return pred, ref


def test_evaluate_regions_scores_unions_of_label_values(tmp_path, capsys):
    pred, ref = _brats_pair(tmp_path)
    res = evaluate(tmp_path / "pred", tmp_path / "ref", regions={"WT": [1, 2, 4], "TC": [1, 4], "ET": [4]},
                   metrics=["dice", "hd95"])  # fmt: skip
    assert res.labels == {1: "WT", 2: "TC", 3: "ET"}
    wt = compute_case_metrics(np.isin(pred, [1, 2, 4]).astype(np.uint8), np.isin(ref, [1, 2, 4]).astype(np.uint8),
                              [1], SPACING, metrics=["dice", "hd95"])[1]  # fmt: skip
    case = res.cases["c1.nii.gz"]
    assert case[1]["dice"] == pytest.approx(wt["dice"]) and case[1]["dice"] < 1
    assert case[2]["dice"] == 1.0 and case[3]["dice"] == 1.0
    assert cli_main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"),
                     "--regions", "brats", "--metrics", "dice"]) == 0
    assert "WT" in capsys.readouterr().out
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"labels": {"background": 0, "whole": [1, 2, 4], "core": [1, 4], "enh": 4, "ignore": 7}}))
    assert cli_main(["evaluate", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"),
                     "--regions", "--metrics", "dice"]) == 0
    out = capsys.readouterr().out
    assert "whole" in out and "enh" in out and "ignore" not in out


def test_evaluate_skips_ignored_reference_voxels(tmp_path):
    ref = np.zeros((10, 9, 8), np.uint8)
    ref[2:6, 2:6, 2:6] = 1
    pred = ref.copy()
    ref[7:9, :, :] = 9  # unannotated
    pred[7:9, 0:3, :] = 1  # whatever is predicted there does not count
    write_volume(Volume(pred[None], _oblique_affine()), tmp_path / "pred" / "c.nii.gz")
    write_volume(Volume(ref[None], _oblique_affine()), tmp_path / "ref" / "c.nii.gz")
    res = evaluate(tmp_path / "pred", tmp_path / "ref", labels=[1], metrics=["dice"], ignore_label=9)
    assert res.cases["c.nii.gz"][1]["dice"] == 1.0
    assert evaluate(tmp_path / "pred", tmp_path / "ref", labels=[1], metrics=["dice"]).cases["c.nii.gz"][1]["dice"] < 1
