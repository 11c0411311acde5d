"""Layouts: tiny fake copies of each dataset layout with the real file names and formats."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medzoo.data.layouts import load_dataset
from medzoo.data.loading import load_case
from medzoo.errors import DataError

SHAPE = (6, 7, 5)


def oblique_affine(spacing=(0.8, 1.1, 2.5)) -> np.ndarray:
    a = np.deg2rad(20)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(spacing)
    aff[:3, 3] = (-10.0, 4.0, 7.5)
    return aff


def save_nii(path: Path, data: np.ndarray, affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, oblique_affine() if affine is None else affine), str(path))
    return path


def save_analyze(path_hdr: Path, data: np.ndarray) -> Path:
    path_hdr.parent.mkdir(parents=True, exist_ok=True)
    img = nib.AnalyzeImage(data, np.diag([1.0, 1.2, 1.5, 1.0]))
    nib.save(img, str(path_hdr))
    return path_hdr


def label_map(values, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lab = np.full(SHAPE, values[0], dtype=np.uint8 if max(values) < 256 else np.int16)
    flat = lab.reshape(-1)
    idx = rng.choice(flat.size, size=len(values) * 3, replace=False)
    for i, v in enumerate(values):
        flat[idx[3 * i : 3 * i + 3]] = v
    return lab


def channel(value: float) -> np.ndarray:
    return np.full(SHAPE, value, dtype=np.float32)


# ---------------------------------------------------------------------------------------------- msd


def make_msd(root: Path, ids=("hippocampus_010", "hippocampus_002", "hippocampus_001")) -> Path:
    training = []
    for n, cid in enumerate(ids):
        img = np.stack([channel(1.0 + n), channel(100.0 + n)], axis=-1)  # 4D (I, J, K, 2)
        save_nii(root / "imagesTr" / f"{cid}.nii.gz", img)
        save_nii(root / "labelsTr" / f"{cid}.nii.gz", label_map([0, 1, 2], n).astype(np.float32))
        training.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
    save_nii(root / "imagesTs" / "hippocampus_100.nii.gz", np.stack([channel(1), channel(2)], -1))
    meta = {
        "name": "Fake", "modality": {"0": "T1", "1": "T2"}, "labels": {"0": "background", "1": "a", "2": "b"},
        "numTraining": len(ids), "training": training, "test": ["./imagesTs/hippocampus_100.nii.gz"],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_msd_cases_sorted_channels_and_labels(tmp_path):
    root = make_msd(tmp_path / "Task99")
    info = load_dataset(root)
    assert info.layout == "msd"
    assert [c.case_id for c in info.cases] == ["hippocampus_001", "hippocampus_002", "hippocampus_010"]
    assert [c.case_id for c in info.test_cases] == ["hippocampus_100"]
    assert info.modalities == ["T1", "T2"] and info.num_classes == 3
    image, label = load_case(info.cases[2], info)  # hippocampus_010 was written with n=0
    assert image.array.shape == (2, *SHAPE) and image.array.dtype == np.float32
    assert image.array[0].max() == 1.0 and image.array[1].max() == 100.0  # channel order kept
    assert label.array.shape == (1, *SHAPE) and label.array.dtype == np.uint8
    assert set(np.unique(label.array)) == {0, 1, 2}
    np.testing.assert_allclose(image.affine, oblique_affine(), atol=1e-5)


@pytest.mark.realdata
def test_msd_reads_real_hippocampus():
    import os

    root = Path(os.environ.get("MEDZOO_HIPPOCAMPUS_DIR", Path(__file__).parents[2] / "shared/data/Task04_Hippocampus"))
    if not (root / "dataset.json").is_file():
        pytest.skip(f"real data not found at {root}")
    info = load_dataset(root)
    assert info.layout == "msd" and len(info.cases) == 180 and info.labels[2] == "Posterior"
    # dtypes vary (float32/uint8 images, two float32 labels): read a few of each kind
    for case in info.cases[:4]:
        image, label = load_case(case, info)
        assert image.array.dtype == np.float32 and label.array.dtype == np.uint8
        assert set(np.unique(label.array)) <= {0, 1, 2}


# ------------------------------------------------------------------------------------------- nnunet


def make_nnunet(root: Path, ending=".nii.gz") -> Path:
    for n, cid in enumerate(["BRATS_2", "BRATS_10", "BRATS_1"]):
        for ch in range(2):
            save_nii(root / "imagesTr" / f"{cid}_{ch:04d}{ending}", channel(10.0 * ch + n))
        save_nii(root / "labelsTr" / f"{cid}{ending}", label_map([0, 1, 3], n))
    save_nii(root / "imagesTs" / f"BRATS_99_0000{ending}", channel(1))
    save_nii(root / "imagesTs" / f"BRATS_99_0001{ending}", channel(1))
    meta = {
        "channel_names": {"0": "T1", "1": "FLAIR"}, "labels": {"background": 0, "edema": 1, "tumor": 3},
        "numTraining": 3, "file_ending": ending,
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_nnunet_cases_channels_and_label_mapping(tmp_path):
    info = load_dataset(make_nnunet(tmp_path / "Dataset001_X"))
    assert info.layout == "nnunet"
    assert [c.case_id for c in info.cases] == ["BRATS_1", "BRATS_2", "BRATS_10"]
    assert [c.case_id for c in info.test_cases] == ["BRATS_99"]
    assert [p.name for p in info.cases[0].image_paths] == ["BRATS_1_0000.nii.gz", "BRATS_1_0001.nii.gz"]
    assert info.labels == {0: "background", 1: "edema", 2: "tumor"}
    assert info.label_mapping == {0: 0, 1: 1, 3: 2}
    image, label = load_case(info.cases[1], info)  # BRATS_2, n=0
    assert image.array[0].max() == 0.0 and image.array[1].max() == 10.0
    assert set(np.unique(label.array)) == {0, 1, 2}


def test_nnunet_missing_channel_names_case(tmp_path):
    root = make_nnunet(tmp_path / "Dataset001_X")
    (root / "imagesTr" / "BRATS_2_0001.nii.gz").unlink()
    with pytest.raises(DataError, match="BRATS_2"):
        load_dataset(root)


def test_ambiguous_and_unknown_layouts(tmp_path):
    root = make_msd(tmp_path / "both")
    meta = json.loads((root / "dataset.json").read_text())
    meta.update(channel_names={"0": "T1"}, file_ending=".nii.gz")
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="ambiguous.*msd.*nnunet"):
        load_dataset(root)
    assert load_dataset(root, layout="msd").layout == "msd"
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="cannot tell"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(DataError, match="unknown dataset layout"):
        load_dataset(root, layout="nope")
