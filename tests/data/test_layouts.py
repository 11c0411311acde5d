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
from support.layouts import (  # noqa: F401
    SHAPE,
    channel,
    label_map,
    make_brats,
    make_mrbrains,
    make_mrbrains2013,
    make_msd,
    make_nnunet,
    oblique_affine,
    save_analyze,
    save_nii,
)

# ---------------------------------------------------------------------------------------------- msd


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

    root = Path(os.environ.get("MEDZOO_HIPPOCAMPUS_DIR", Path(__file__).parents[3] / "shared/data/Task04_Hippocampus"))
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


# -------------------------------------------------------------------------------------------- brats


def test_brats_modalities_label_remap_and_regions(tmp_path):
    info = load_dataset(make_brats(tmp_path / "brats"))
    assert info.layout == "brats"
    assert [c.case_id for c in info.cases] == ["BraTS2021_00002", "BraTS2021_00010"]
    assert [c.case_id for c in info.test_cases] == ["BraTS2021_99999"]
    assert info.modalities == ["t1", "t1ce", "t2", "flair"]
    assert info.regions == {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]} and info.regions_class_order == [2, 1, 4]
    image, label = load_case(info.cases[1], info)  # 00010, n=0
    assert [float(image.array[m].max()) for m in range(4)] == [0.0, 10.0, 20.0, 30.0]
    raw = nib.load(str(info.cases[1].label_path)).get_fdata()
    assert set(np.unique(label.array)) == {0, 1, 2, 3}
    assert (label.array[0][raw == 4] == 3).all() and (label.array[0][raw == 2] == 2).all()


def test_brats_missing_modality_names_case(tmp_path):
    root = make_brats(tmp_path / "brats")
    (root / "HGG" / "BraTS2021_00002" / "BraTS2021_00002_t1ce.nii.gz").unlink()
    with pytest.raises(DataError, match="BraTS2021_00002.*t1ce"):
        load_dataset(root)


# --------------------------------------------------------------------------------------------- iseg


def test_iseg_analyze_files_and_label_mapping(tmp_path):
    root = tmp_path / "iSeg-2017-Training"
    for s in (1, 10, 2):
        save_analyze(root / f"subject-{s}-T1.hdr", channel(s))
        save_analyze(root / f"subject-{s}-T2.hdr", channel(100 + s))
        save_analyze(root / f"subject-{s}-label.hdr", label_map([0, 10, 150, 250], s))
    save_analyze(root / "subject-11-T1.hdr", channel(1))
    save_analyze(root / "subject-11-T2.hdr", channel(1))
    info = load_dataset(root)
    assert info.layout == "iseg"
    assert [c.case_id for c in info.cases] == ["subject-1", "subject-2", "subject-10"]
    assert [c.case_id for c in info.test_cases] == ["subject-11"]
    assert info.labels == {0: "background", 1: "csf", 2: "gray_matter", 3: "white_matter"}
    image, label = load_case(info.cases[2], info)
    assert image.array[0].max() == 10 and image.array[1].max() == 110
    raw = np.asarray(nib.load(str(info.cases[2].label_path)).dataobj)
    for value, cls in {0: 0, 10: 1, 150: 2, 250: 3}.items():
        assert (label.array[0][raw == value] == cls).all() and (raw == value).any()


# ----------------------------------------------------------------------------------------- mrbrains


@pytest.mark.parametrize("classes", [9, 4, 11])
def test_mrbrains_label_groupings(tmp_path, classes):
    info = load_dataset(make_mrbrains(tmp_path / "mrbrains"), classes=classes)
    assert info.layout == "mrbrains"
    assert [c.case_id for c in info.cases] == ["1", "070", "148"]
    assert info.modalities == ["T1", "IR", "FLAIR"] and info.num_classes == classes
    image, label = load_case(info.cases[0], info)
    assert [float(image.array[m].max()) for m in range(3)] == [1.0, 11.0, 21.0]
    raw = np.asarray(nib.load(str(info.cases[0].label_path)).dataobj)
    lab = label.array[0]
    if classes == 4:
        expected = {0: 0, 1: 1, 2: 1, 3: 2, 4: 2, 5: 3, 6: 3, 7: 0, 8: 0, 9: 0, 10: 0}
        assert info.labels == {0: "background", 1: "gray_matter", 2: "white_matter", 3: "csf"}
    elif classes == 9:
        expected = {**{v: v for v in range(9)}, 9: 0, 10: 0}
    else:
        expected = {v: v for v in range(11)}
    for value, cls in expected.items():  # every raw value present is mapped as documented
        assert (raw == value).any() and (lab[raw == value] == cls).all()


@pytest.mark.parametrize("classes", [4, 9])
def test_mrbrains2013_files_labels_and_test_subjects(tmp_path, classes):
    root = make_mrbrains2013(tmp_path / "MRBrainS13DataNii")
    info = load_dataset(root, classes=classes)  # auto-detected beside the 2018 edition
    assert info.layout == "mrbrains2013" and info.num_classes == classes
    assert [c.case_id for c in info.cases] == ["TrainingData_1", "TrainingData_5", "TrainingData_12"]
    assert [c.case_id for c in info.test_cases] == ["TestData_1"]
    assert info.modalities == ["T1", "T1_IR", "T2_FLAIR"]
    wanted = "LabelsForTesting.nii" if classes == 4 else "LabelsForTraining.nii"
    assert all(c.label_path.name == wanted for c in info.cases)
    if classes == 4:
        assert info.labels == {0: "background", 1: "csf", 2: "gray_matter", 3: "white_matter"}
    image, label = load_case(info.cases[1], info)  # subject 5 (n=0 in the fake copy)
    assert [float(image.array[m].max()) for m in range(3)] == [0.0, 10.0, 20.0]
    raw = np.asarray(nib.load(str(info.cases[1].label_path)).dataobj)
    assert np.array_equal(label.array[0], raw) and set(np.unique(raw)) == set(range(classes))


def test_mrbrains2013_missing_modality_and_bad_classes(tmp_path):
    root = make_mrbrains2013(tmp_path / "m13")
    (root / "TrainingData" / "5" / "T1_IR.nii").unlink()
    (root / "TrainingData" / "5" / "T1_IR.nii.gz").write_bytes(b"")  # another suffix still counts as present
    info = load_dataset(root, layout="mrbrains2013")
    assert info.cases[1].image_paths[1].name == "T1_IR.nii.gz"
    (root / "TrainingData" / "1" / "T2_FLAIR.nii").unlink()
    with pytest.raises(DataError, match=r"case 1: missing the T2_FLAIR file"):
        load_dataset(root, layout="mrbrains2013")
    with pytest.raises(DataError, match="classes must be 4 or 9"):
        load_dataset(root, layout="mrbrains2013", classes=11)


# ------------------------------------------------------------------------------------ folder and csv


def test_folder_layout_patterns(tmp_path):
    root = tmp_path / "custom"
    for n, cid in enumerate(["p3", "p1", "p20"]):
        save_nii(root / cid / "t1.nii.gz", channel(n))
        save_nii(root / cid / "t2.nii.gz", channel(50 + n))
        save_nii(root / "labels" / f"{cid}_mask.nii.gz", label_map([0, 3, 7], n))
    save_nii(root / "p99" / "t1.nii.gz", channel(1))
    save_nii(root / "p99" / "t2.nii.gz", channel(1))
    info = load_dataset(root, images={"T2": "{case}/t2.nii.gz", "T1": "{case}/t1.nii.gz"},
                        label="labels/{case}_mask.nii.gz")
    assert info.layout == "folder"
    assert [c.case_id for c in info.cases] == ["p1", "p3", "p20"]
    assert [c.case_id for c in info.test_cases] == ["p99"]
    assert info.modalities == ["T2", "T1"]
    assert info.label_mapping == {0: 0, 3: 1, 7: 2}  # read from the label files
    image, label = load_case(info.cases[1], info)  # p3, n=0
    assert image.array[0].max() == 50 and image.array[1].max() == 0
    assert set(np.unique(label.array)) == {0, 1, 2}
    save_nii(root / "p5" / "t1.nii.gz", channel(1))
    with pytest.raises(DataError, match="p5.*T2"):
        load_dataset(root, images={"T2": "{case}/t2.nii.gz", "T1": "{case}/t1.nii.gz"}, layout="folder")


def test_csv_layout_relative_paths(tmp_path):
    root = tmp_path / "csvdata"
    rows = ["case_id,flair,t1,label"]
    for n, cid in enumerate(["b", "a"]):
        save_nii(root / "img" / f"{cid}_flair.nii.gz", channel(n))
        save_nii(root / "img" / f"{cid}_t1.nii.gz", channel(10 + n))
        save_nii(root / "seg" / f"{cid}.nii.gz", label_map([0, 1], n))
        rows.append(f"{cid},img/{cid}_flair.nii.gz,img/{cid}_t1.nii.gz,seg/{cid}.nii.gz")
    (root / "cases.csv").write_text("\n".join(rows) + "\n")
    info = load_dataset(root / "cases.csv", labels={0: "background", 1: "lesion"})
    assert info.layout == "csv" and info.modalities == ["flair", "t1"]
    assert [c.case_id for c in info.cases] == ["a", "b"]
    image, label = load_case(info.cases[1], info)  # b, n=0
    assert image.array[0].max() == 0 and image.array[1].max() == 10
    assert info.labels == {0: "background", 1: "lesion"}


# ------------------------------------------------------------------------------------------ bad input


def _bad_case_info(tmp_path):
    root = make_msd(tmp_path / "bad", ids=("c1",))
    return root, load_dataset(root)


def test_bad_inputs_raise_data_error_naming_case(tmp_path):
    root, info = _bad_case_info(tmp_path)
    case = info.cases[0]
    lab_path = case.label_path
    good = np.asarray(nib.load(str(lab_path)).dataobj)
    # shape mismatch
    save_nii(lab_path, np.zeros((6, 7, 4), np.uint8))
    with pytest.raises(DataError, match="case c1: label shape"):
        load_case(case, info)
    # affine mismatch
    shifted = oblique_affine()
    shifted[0, 3] += 2.0
    save_nii(lab_path, good, shifted)
    with pytest.raises(DataError, match="case c1: label affine"):
        load_case(case, info)
    # undeclared label value
    bad = good.copy()
    bad[0, 0, 0] = 5
    save_nii(lab_path, bad)
    with pytest.raises(DataError, match=r"case c1: label values \[5\]"):
        load_case(case, info)
    # empty label map
    save_nii(lab_path, np.zeros(SHAPE, np.float32))
    with pytest.raises(DataError, match="case c1: label map is empty"):
        load_case(case, info)
    # NaN voxels in the image
    save_nii(lab_path, good)
    img = np.stack([channel(1), channel(2)], -1)
    img[1, 1, 1, 0] = np.nan
    save_nii(case.image_paths[0], img)
    with pytest.raises(DataError, match="case c1.*(NaN|nan)"):
        load_case(case, info)
    # missing modality file
    case.image_paths[0].unlink()
    with pytest.raises(DataError, match="case c1: the image .* does not exist"):
        load_case(case, info)


def test_modalities_on_different_grids(tmp_path):
    root = make_nnunet(tmp_path / "Dataset002_Y")
    save_nii(root / "imagesTr" / "BRATS_1_0001.nii.gz", np.zeros((6, 7, 6), np.float32))
    info = load_dataset(root)
    with pytest.raises(DataError, match="case BRATS_1: modality BRATS_1_0001"):
        load_case(info.cases[0], info)


@pytest.mark.realdata
def test_folder_layout_reads_real_brats2013_with_nested_regions():
    """BraTS 2013 as shipped with DeepMedic, read as docs/workflows.md shows: two channels, the region view."""
    import os

    import torch

    from medzoo.losses import labels_to_regions

    root = Path(os.environ.get("MEDZOO_BRATS2013_DIR", Path(__file__).parents[3] / "shared/data/BraTS2013_deepmedic"))
    if not root.is_dir():
        pytest.skip(f"real data not found at {root}")
    info = load_dataset(root, layout="folder",
                        images={"flair": "{case}/Flair_subtrMeanDivStd.nii.gz", "t1c": "{case}/T1c_subtrMeanDivStd.nii.gz"},
                        label="{case}/OTMultiClass.nii.gz",
                        regions={"WT": [1, 2, 3, 4], "TC": [1, 3, 4], "ET": [4]}, regions_class_order=[2, 1, 4])
    assert len(info.cases) == 6 and info.modalities == ["flair", "t1c"]
    assert list(info.regions) == ["WT", "TC", "ET"] and info.regions_class_order == [2, 1, 4]
    for case in info.cases[:2]:
        image, label = load_case(case, info)
        assert image.array.shape == (2, 240, 240, 155) and label.array.shape == (1, 240, 240, 155)
        assert set(np.unique(label.array)) <= {0, 1, 2, 3, 4}
        wt, tc, et = labels_to_regions(torch.from_numpy(label.array.astype(np.int64)), list(info.regions.values()))[0]
        assert wt.sum() > 0 and bool((tc <= wt).all()) and bool((et <= tc).all())  # nested
