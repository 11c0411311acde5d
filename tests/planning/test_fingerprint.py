"""Fingerprint and the fingerprint / preprocess commands."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medzoo.cli import main
from medzoo.data.case import Case, DatasetInfo
from medzoo.io.readers import write_volume
from medzoo.io.volume import Volume
from medzoo.planning.fingerprint import compute_fingerprint, norm_stats_from_fingerprint


def oblique_affine(spacing):
    a = np.deg2rad(30)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(spacing)
    return aff


def make_info(root, shapes=((10, 12, 8), (14, 12, 6)), spacings=((1.0, 1.0, 2.0), (1.2, 1.0, 3.0))):
    cases = []
    for i, (shape, sp) in enumerate(zip(shapes, spacings)):
        lab = np.zeros(shape, np.uint8)
        lab[2:5, 2:5, 1:3] = 1  # 18 voxels
        lab[6:8, 6:9, 2:4] = 2  # 12 voxels
        img = np.zeros((1, *shape), np.float32)
        img[0, 1:-1, 1:-1, 1:-1] = 5.0
        img[0][lab == 1] = 100.0 + i
        img[0][lab == 2] = 200.0
        ip = write_volume(Volume(img, oblique_affine(sp)), root / f"c{i}.nii.gz")
        lp = write_volume(Volume(lab[None], oblique_affine(sp)), root / f"c{i}_seg.nii.gz")
        cases.append(Case(f"c{i}", [ip], lp))
    return DatasetInfo(root, "folder", cases, {0: "bg", 1: "a", 2: "b"}, ["CT"])


def test_fingerprint_values(tmp_path):
    fp = compute_fingerprint(make_info(tmp_path))
    assert fp["num_cases"] == 2 and fp["case_ids"] == ["c0", "c1"]
    np.testing.assert_allclose(fp["spacings"], [[1.0, 1.0, 2.0], [1.2, 1.0, 3.0]], atol=1e-5)
    assert fp["shapes"] == [[10, 12, 8], [14, 12, 6]]
    assert fp["shapes_after_crop"] == [[8, 10, 6], [12, 10, 4]]
    np.testing.assert_allclose(fp["median_spacing"], [1.1, 1.0, 2.5], atol=1e-5)
    np.testing.assert_allclose(fp["median_shape"], [12, 12, 7])
    st = fp["intensity"][0]
    assert st["modality"] == "CT" and st["min"] == 100.0 and st["max"] == 200.0
    # foreground voxels: 18 x 100, 12 x 200 (case 0) and 18 x 101, 12 x 200 (case 1)
    assert st["mean"] == pytest.approx((18 * 100 + 18 * 101 + 24 * 200) / 60)
    assert st["percentile_99_5"] == pytest.approx(200.0)
    total = 10 * 12 * 8 + 14 * 12 * 6
    np.testing.assert_allclose(fp["class_frequencies"], [(total - 60) / total, 36 / total, 24 / total])
    assert fp["class_presence"] == [1.0, 1.0, 1.0]
    stats = norm_stats_from_fingerprint(fp)
    assert set(stats[0]) == {"mean", "std", "percentile_00_5", "percentile_99_5"}
    json.dumps(fp)  # JSON-able


def test_cli_fingerprint_and_preprocess(tmp_path, capsys):
    from medzoo.data.phantom import make_phantom_dataset

    data = make_phantom_dataset(tmp_path / "ds", cases=2, shape=(16, 18, 12))
    assert main(["-q", "fingerprint", str(data), "--out", str(tmp_path / "fp.json")]) == 0
    fp = json.loads((tmp_path / "fp.json").read_text())
    assert fp["num_cases"] == 2 and len(fp["intensity"]) == 2
    assert main(["-q", "preprocess", str(data), "--out", str(tmp_path / "cache")]) == 0
    assert sorted(p.name for p in (tmp_path / "cache").glob("*_image.npy")) == [
        "phantom_000_image.npy", "phantom_001_image.npy"]
    assert (tmp_path / "cache" / "plan.json").is_file()
    assert main(["-q", "preprocess", str(tmp_path / "missing"), "--out", str(tmp_path / "c2")]) == 1
    assert "does not exist" in capsys.readouterr().err
