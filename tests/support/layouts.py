"""Tiny fake copies of each dataset layout, with the real file names and formats."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

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


def make_brats(root: Path) -> Path:
    for n, cid in enumerate(["BraTS2021_00010", "BraTS2021_00002"]):
        folder = root / "HGG" / cid
        for m, mod in enumerate(["t1", "t1ce", "t2", "flair"]):
            save_nii(folder / f"{cid}_{mod}.nii.gz", channel(10.0 * m + n))
        save_nii(folder / f"{cid}_seg.nii.gz", label_map([0, 1, 2, 4], n))
    val = root / "BraTS2021_99999"
    for mod in ["t1", "t1ce", "t2", "flair"]:
        save_nii(val / f"BraTS2021_99999_{mod}.nii.gz", channel(1))
    return root


def make_mrbrains(root: Path) -> Path:
    for n, sid in enumerate(["148", "1", "070"]):
        for m, rel in enumerate(["pre/reg_T1.nii.gz", "pre/reg_IR.nii.gz", "pre/FLAIR.nii.gz"]):
            save_nii(root / sid / rel, channel(10.0 * m + n))
        save_nii(root / sid / "segm.nii.gz", label_map(list(range(11)), n))
    return root


def make_mrbrains2013(root: Path) -> Path:
    """MRBrainS 2013 as distributed in NIfTI: TrainingData/N with both label files, TestData/N without."""
    for n, sid in enumerate(["5", "1", "12"]):
        folder = root / "TrainingData" / sid
        for m, name in enumerate(["T1.nii", "T1_IR.nii", "T2_FLAIR.nii"]):
            save_nii(folder / name, channel(10.0 * m + n))
        save_nii(folder / "LabelsForTesting.nii", label_map([0, 1, 2, 3], n))
        save_nii(folder / "LabelsForTraining.nii", label_map(list(range(9)), n))
    for name in ["T1.nii", "T1_IR.nii", "T2_FLAIR.nii"]:
        save_nii(root / "TestData" / "1" / name, channel(1))
    return root
