"""Synthetic phantoms: layout, labels, contrast, geometry, reproducibility, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medzoo.cli import main
from medzoo.data.phantom import make_phantom_case, make_phantom_dataset
from medzoo.io.readers import read_volume

SHAPE = (24, 28, 20)


def test_case_shapes_dtypes_and_classes():
    image, label = make_phantom_case(0, shape=SHAPE)
    assert image.array.shape == (2, *SHAPE) and image.array.dtype == np.float32
    assert label.array.shape == (1, *SHAPE) and label.array.dtype == np.uint8
    assert set(np.unique(label.array)) == {0, 1, 2, 3}
    assert np.isfinite(image.array).all()
    np.testing.assert_array_equal(image.affine, label.affine)


def test_case_geometry_is_oblique_anisotropic_and_offset():
    image, _ = make_phantom_case(1)
    spacing = np.array(image.spacing)
    np.testing.assert_allclose(spacing, (1.0, 1.2, 2.0), rtol=0.051)
    direction = image.direction
    assert not np.allclose(direction, np.eye(3), atol=1e-3)  # rotated
    np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-9)  # a proper rotation
    assert np.abs(image.origin).min() > 1.0
    image2, _ = make_phantom_case(1, spacing=(0.5, 0.5, 3.0))
    np.testing.assert_allclose(image2.spacing, (0.5, 0.5, 3.0), rtol=0.051)


def test_contrast_t1_wm_bright_csf_dark_t2_csf_bright():
    image, label = make_phantom_case(2)
    t1, t2, lab = image.array[0], image.array[1], label.array[0]
    mean = {c: (t1[lab == c].mean(), t2[lab == c].mean()) for c in range(4)}
    assert mean[3][0] > mean[2][0] > mean[1][0]  # T1: WM > GM > CSF
    assert mean[1][1] > mean[2][1] > mean[3][1]  # T2: CSF > GM > WM
    # noise is present but small compared to the WM/GM contrast
    wm = t1[lab == 3]
    assert 0.0 < wm.std() < 0.5 * (mean[3][0] - mean[2][0]) * 2
    # each tissue is several voxels thick: a one-voxel erosion keeps most of every class
    from scipy import ndimage

    for c in (1, 2, 3):
        mask = lab == c
        assert ndimage.binary_erosion(mask).sum() > 0.2 * mask.sum(), c


def test_same_seed_identical_different_seed_differs():
    a_img, a_lab = make_phantom_case(7, shape=SHAPE)
    b_img, b_lab = make_phantom_case(7, shape=SHAPE)
    assert a_img.array.tobytes() == b_img.array.tobytes()
    assert a_lab.array.tobytes() == b_lab.array.tobytes()
    np.testing.assert_array_equal(a_img.affine, b_img.affine)
    c_img, c_lab = make_phantom_case(8, shape=SHAPE)
    assert not np.array_equal(a_lab.array, c_lab.array)
    assert not np.allclose(a_img.affine, c_img.affine)


def test_cases_vary_in_size_and_position():
    volumes = [make_phantom_case(s, shape=SHAPE)[1].array[0] for s in range(4)]
    sizes = [int((v > 0).sum()) for v in volumes]
    centres = [np.argwhere(v == 3).mean(axis=0) for v in volumes]
    assert len(set(sizes)) == 4
    assert max(np.abs(c - centres[0]).max() for c in centres[1:]) > 0.3


def test_dataset_layout_and_json(tmp_path):
    out = make_phantom_dataset(tmp_path / "ph", cases=3, seed=5, shape=SHAPE, test_cases=1)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["modality"] == {"0": "T1", "1": "T2"}
    assert meta["labels"] == {"0": "background", "1": "csf", "2": "gray_matter", "3": "white_matter"}
    assert meta["numTraining"] == 3 and meta["tensorImageSize"] == "4D"
    assert meta["training"][0] == {
        "image": "./imagesTr/phantom_000.nii.gz", "label": "./labelsTr/phantom_000.nii.gz"
    }
    assert meta["test"] == ["./imagesTs/phantom_003.nii.gz"]
    assert (out / "labelsTs" / "phantom_003.nii.gz").is_file()
    for entry in meta["training"]:
        image = read_volume(out / entry["image"])
        label = read_volume(out / entry["label"])
        assert image.array.shape == (2, *SHAPE) and image.array.dtype == np.float32
        assert label.array.shape == (1, *SHAPE) and label.array.dtype == np.uint8
        np.testing.assert_allclose(image.affine, label.affine, atol=1e-6)
    # the files hold exactly the in-memory case's arrays
    first = read_volume(out / "labelsTr" / "phantom_000.nii.gz")
    again = make_phantom_dataset(tmp_path / "again", cases=1, seed=5, shape=SHAPE)
    np.testing.assert_array_equal(read_volume(again / "labelsTr" / "phantom_000.nii.gz").array, first.array)


def test_dataset_into_a_file_is_an_error(tmp_path):
    from medzoo.errors import DataError

    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        make_phantom_dataset(target, cases=1, shape=SHAPE)


def test_cli_phantom_writes_dataset(tmp_path, capsys):
    code = main(["phantom", "--out", str(tmp_path / "d"), "--cases", "2", "--seed", "3",
                 "--shape", "24", "28", "20"])
    assert code == 0
    meta = json.loads((tmp_path / "d" / "dataset.json").read_text())
    assert meta["numTraining"] == 2
    assert read_volume(tmp_path / "d" / "imagesTr" / "phantom_001.nii.gz").array.shape == (2, *SHAPE)


def test_cli_phantom_bad_out_is_one_line_error(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    code = main(["phantom", "--out", str(target), "--cases", "1", "--shape", "24", "28", "20"])
    err = capsys.readouterr().err
    assert code != 0
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert str(target) in err


def test_python_m_medzoo_phantom_subprocess(tmp_path):
    import subprocess
    import sys

    ok = subprocess.run(
        [sys.executable, "-m", "medzoo", "phantom", "--out", str(tmp_path / "p"), "--cases", "1",
         "--shape", "16", "16", "12"],
        capture_output=True, text=True, timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "p" / "imagesTr" / "phantom_000.nii.gz").is_file()
    (tmp_path / "f").write_text("x")
    bad = subprocess.run(
        [sys.executable, "-m", "medzoo", "phantom", "--out", str(tmp_path / "f"), "--cases", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert bad.returncode != 0
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------- other kinds
def test_ct_phantom_is_in_hounsfield_units_with_air_and_a_table():
    from medzoo.data.phantom import make_body_case

    image, label = make_body_case(0, "ct", shape=(64, 64, 16))
    hu, lab = image.array[0], label.array[0]
    assert image.array.shape == (1, 64, 64, 16) and label.array.dtype == np.uint8
    assert abs(np.median(hu[:3, :3]) + 1000) < 60  # air in the corners
    assert set(np.unique(lab)) == {0, 1, 2, 3}  # liver, kidneys, spleen
    table = hu[20:44, 51:58].max(axis=1)  # under the body (j near 0.67 of the half field), across the middle
    assert 100 < np.median(table) < 260
    assert np.median(hu[20:44, 58:]) < -900  # air under the table
    assert -30 < np.median(hu[lab == 1]) < 150  # soft tissue
    np.testing.assert_allclose(image.spacing[:2], (0.8, 0.8), rtol=0.031)
    assert image.spacing[2] == pytest.approx(3.0)


def test_multi_organ_sizes_differ_by_orders_of_magnitude_and_spacings_differ(tmp_path):
    root = make_phantom_dataset(tmp_path / "mo", cases=4, seed=0, shape=(64, 64, 32), kind="multi-organ")
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["modality"] == {"0": "CT"} and len(meta["labels"]) == 8
    spacings, counts = set(), np.zeros(8, int)
    for entry in meta["training"]:
        img = read_volume(root / entry["image"])
        lab = read_volume(root / entry["label"]).array[0].astype(int)
        spacings.add(round(img.spacing[2], 2))
        assert img.spatial_shape == lab.shape and max(img.spatial_shape) <= 64
        counts += np.bincount(lab.ravel(), minlength=8)[:8]
    assert (counts[1:] > 0).all()
    assert counts[1:].min() < 0.01 * counts[1:].max()  # an adrenal against a liver
    assert len(spacings) >= 2


def test_thick_mri_has_few_thick_slices():
    from medzoo.data.phantom import _kind_case

    for seed in range(3):
        image, label = _kind_case("thick-mri", seed, (48, 48, 12), None)
        assert 5.0 <= image.spacing[2] <= 10.0 * 1.06 and image.spacing[0] < 1.0
        assert image.spatial_shape[2] <= 12 and set(np.unique(label.array)) == {0, 1, 2, 3}


def test_kinds_are_reproducible_and_unknown_kinds_refused(tmp_path):
    from medzoo.data.phantom import make_body_case
    from medzoo.errors import DataError

    a, b = make_body_case(5, "multi-organ", (40, 40, 12)), make_body_case(5, "multi-organ", (40, 40, 12))
    assert a[0].array.tobytes() == b[0].array.tobytes() and a[1].array.tobytes() == b[1].array.tobytes()
    with pytest.raises(DataError, match="unknown phantom kind"):
        make_phantom_dataset(tmp_path / "x", cases=1, kind="pet")


def test_cli_phantom_kind(tmp_path, capsys):
    assert main(["phantom", "--out", str(tmp_path / "ct"), "--cases", "1", "--kind", "ct", "--shape", "48", "48", "12"]) == 0
    assert "ct phantom" in capsys.readouterr().out
    meta = json.loads((tmp_path / "ct" / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "liver", "2": "kidney", "3": "spleen"}
