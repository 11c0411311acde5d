"""Opt-in check on the real Task04_Hippocampus files (skipped when the data is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from medzoo.io.readers import read_volume, write_volume

ROOT = Path(
    os.environ.get("MEDZOO_HIPPOCAMPUS_DIR", Path(__file__).resolve().parents[2] / "../shared/data/Task04_Hippocampus")
)

pytestmark = pytest.mark.realdata


@pytest.mark.skipif(not (ROOT / "imagesTr").is_dir(), reason="Task04_Hippocampus not available")
def test_hippocampus_matches_nibabel_and_roundtrips(tmp_path):
    import nibabel as nib

    image_path = sorted((ROOT / "imagesTr").glob("hippocampus_*.nii.gz"))[0]
    label_path = ROOT / "labelsTr" / image_path.name
    image = read_volume(image_path, spatial_dims=3)
    label = read_volume(label_path, spatial_dims=3)
    reference = nib.load(str(image_path))
    np.testing.assert_array_equal(image.array[0], np.asanyarray(reference.dataobj))
    np.testing.assert_allclose(image.affine, reference.affine)
    assert image.same_grid(label)
    assert set(np.unique(label.array)) <= {0, 1, 2}
    for suffix in (".nrrd", ".mha"):
        back = read_volume(write_volume(read_volume(write_volume(image, tmp_path / f"h{suffix}")),
                                        tmp_path / f"h{suffix}.nii.gz"))
        np.testing.assert_array_equal(back.array, image.array)
        np.testing.assert_allclose(back.affine, image.affine, atol=1e-5)
