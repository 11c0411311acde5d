"""Phantom variants for the workflow tests: nested regions with the dataset's own label values, sparse labels."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from medzoo.data.phantom import make_phantom_dataset

#: Raw label values of the region phantom (CSF, gray matter, white matter: nested shells of the phantom).
REGION_VALUES = {10: "csf", 20: "gray_matter", 40: "white_matter"}
REGION_OPTIONS = {
    "regions": {"brain": [10, 20, 40], "tissue": [20, 40], "white_matter": [40]},
    "regions_class_order": [10, 20, 40],
}


def _relabel(root: Path, change) -> None:
    for path in sorted((root / "labelsTr").glob("*.nii.gz")):
        img = nib.load(str(path))
        data = np.asarray(img.dataobj).astype(np.int16)
        nib.save(nib.Nifti1Image(change(data, path.name).astype(np.int16), img.affine), str(path))


def make_region_phantom(root: Path, cases: int = 5, shape=(32, 32, 24)) -> Path:
    """The demo phantom with its classes 1/2/3 stored as 10/20/40 (nested regions brain ⊃ tissue ⊃ WM)."""
    make_phantom_dataset(root, cases=cases, seed=0, shape=shape)
    lut = np.array([0, 10, 20, 40], np.int16)
    _relabel(root, lambda lab, _: lut[lab])
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"0": "background", **{str(v): n for v, n in REGION_VALUES.items()}}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def make_sparse_copy(full: Path, sparse: Path, ignore: int = 9, every: int = 6) -> Path:
    """A copy of an MSD phantom whose labels survive only on every ``every``-th slice (along the last axis);
    the other voxels carry the ignore value."""
    import shutil

    shutil.copytree(full, sparse)

    def erase(lab, _):
        out = np.full_like(lab, ignore)
        out[..., ::every] = lab[..., ::every]
        return out

    _relabel(sparse, erase)
    return sparse
