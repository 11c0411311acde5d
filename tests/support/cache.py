"""A three-case two-channel dataset on an oblique grid, and a plan for it."""

from __future__ import annotations

import numpy as np

from medzoo.data.case import Case, DatasetInfo
from medzoo.io.readers import write_volume
from medzoo.io.volume import Volume
from medzoo.planning.plan import Plan

SHAPE = (20, 18, 12)


def oblique_affine(spacing=(0.9, 1.2, 2.0)) -> np.ndarray:
    a = np.deg2rad(15)
    rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(spacing)
    aff[:3, 3] = (3.0, -2.0, 5.0)
    return aff


def make_dataset(root, n=3, seed=0) -> DatasetInfo:
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        lab = np.zeros(SHAPE, np.uint8)
        lab[5:10, 4:9, 3:7] = 1
        lab[12:15, 10:14, 6:9] = 2
        img = np.zeros((2, *SHAPE), np.float32)
        img[:, 2:18, 2:16, 1:11] = rng.normal(100, 10, (2, 16, 14, 10))
        img[0][lab == 1] += 50
        img[1][lab == 2] -= 40
        ip = write_volume(Volume(img, oblique_affine()), root / f"case_{i}_img.nii.gz")
        lp = write_volume(Volume(lab[None], oblique_affine()), root / f"case_{i}_seg.nii.gz")
        cases.append(Case(f"case_{i}", [ip], lp))
    return DatasetInfo(root, "folder", cases, {0: "bg", 1: "a", 2: "b"}, ["T1", "T2"])


PLAN = Plan(model="unet3d", in_channels=2, num_classes=3, crop_to_nonzero=True,
            normalization=["zscore_nonzero", "zscore"])
