"""Bad input: a clear error naming the case, the documented logged skip, nothing half-written in the cache.

Complements ``test_data_layouts.py::test_bad_inputs_raise_data_error_naming_case`` (shape/affine mismatch,
undeclared values, empty label, NaN image, missing file) and ``test_data_cache_loader.py`` (interrupted case
redone, bad case leaves no file) with: NaN labels, missing modalities in every layout that lists files, the
skip option logging the case, an interrupt in the middle of a case, and the CLI's one-line error.
"""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest

from medzoo.cli import main
from medzoo.data import cache as cache_mod
from medzoo.data.cache import build_cache, load_cache
from medzoo.data.layouts import OPTIONS_FILE, load_dataset
from medzoo.data.loading import load_case
from medzoo.errors import DataError
from medzoo.io.readers import read_volume, write_volume
from medzoo.io.volume import Volume
from support.cache import PLAN, make_dataset
from support.layouts import make_brats, make_mrbrains, save_analyze, save_nii


def test_nan_voxels_name_the_case_and_modality(tmp_path):
    info = make_dataset(tmp_path / "raw", n=1)
    case = info.cases[0]
    image = read_volume(case.image_paths[0])
    arr = image.array.copy()
    arr[1, 3, 3, 3] = np.inf
    arr[1, 4, 4, 4] = np.nan
    write_volume(Volume(arr, image.affine), case.image_paths[0])
    with pytest.raises(DataError, match=r"case case_0: .*case_0_img\.nii\.gz.*2 NaN/Inf voxel"):
        load_case(case, info)


def test_nan_in_label_map_names_the_case(tmp_path):
    info = make_dataset(tmp_path / "raw", n=1)
    case = info.cases[0]
    label = read_volume(case.label_path)
    lab = label.array.astype(np.float32)
    lab[0, 1, 1, 1] = np.nan
    write_volume(Volume(lab, label.affine), case.label_path)
    with pytest.raises(DataError, match=r"case case_0: .*label.*case_0_seg\.nii\.gz.*1 NaN/Inf voxel"):
        load_case(case, info)
    lab[0, 1, 1, 1] = 0.5  # a probability map given as a label
    write_volume(Volume(lab, label.affine), case.label_path)
    with pytest.raises(DataError, match="case case_0: label map holds non-integer values"):
        load_case(case, info)


def test_missing_modality_named_in_every_file_listing_layout(tmp_path):
    brats = make_brats(tmp_path / "brats")
    (brats / "HGG" / "BraTS2021_00010" / "BraTS2021_00010_flair.nii.gz").rename(
        brats / "HGG" / "BraTS2021_00010" / "BraTS2021_00010_FLAIR_old.nii.gz")
    with pytest.raises(DataError, match="case BraTS2021_00010: missing the flair file"):
        load_dataset(brats, layout="brats")

    mr = make_mrbrains(tmp_path / "mr")
    (mr / "070" / "pre" / "reg_IR.nii.gz").unlink()
    with pytest.raises(DataError, match="case 070: missing the IR file pre/reg_IR.nii.gz"):
        load_dataset(mr)

    iseg = tmp_path / "iseg"
    shape = (6, 7, 5)
    save_analyze(iseg / "subject-3-T1.hdr", np.ones(shape, np.float32))
    save_analyze(iseg / "subject-3-label.hdr", np.zeros(shape, np.uint8))
    with pytest.raises(DataError, match="case subject-3: missing the T2 file"):
        load_dataset(iseg)

    csv_root = tmp_path / "csv"
    save_nii(csv_root / "a_t1.nii.gz", np.ones(shape, np.float32))
    (csv_root / "cases.csv").write_text("case_id,t1,t2,label\nA7,a_t1.nii.gz,,\n")
    with pytest.raises(DataError, match=r"line 2 \(case A7\) has no 't2' path"):
        load_dataset(csv_root / "cases.csv")


def test_layout_options_file_and_explicit_options(tmp_path):
    root = tmp_path / "own"
    for n, cid in enumerate(["p1", "p2"]):
        save_nii(root / cid / "t1.nii.gz", np.full((6, 7, 5), n, np.float32))
        lab = np.zeros((6, 7, 5), np.uint8)
        lab[1, 1, 1] = 2
        save_nii(root / cid / "seg.nii.gz", lab)
    (root / OPTIONS_FILE).write_text('{"layout": "folder", "images": {"t1": "{case}/t1.nii.gz"}}')
    info = load_dataset(root)
    assert info.layout == "folder" and [c.case_id for c in info.test_cases] == ["p1", "p2"] and not info.cases
    info = load_dataset(root, label="{case}/seg.nii.gz", labels={0: "bg", 2: "tumour"})
    assert [c.case_id for c in info.cases] == ["p1", "p2"] and info.label_mapping == {0: 0, 2: 1}
    (root / OPTIONS_FILE).write_text("[1, 2]")
    with pytest.raises(DataError, match=OPTIONS_FILE):
        load_dataset(root)


def test_skip_bad_cases_is_logged_naming_the_case(tmp_path, caplog):
    info = make_dataset(tmp_path / "raw", n=3)
    shifted = read_volume(info.cases[1].label_path)
    aff = shifted.affine.copy()
    aff[:3, 3] += 3.0
    write_volume(Volume(shifted.array, aff), info.cases[1].label_path)
    with pytest.raises(DataError, match="case case_1: label affine differs"):
        build_cache(info, PLAN, tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").glob("case_1*")) and not list((tmp_path / "cache").glob(".*"))
    with caplog.at_level(logging.WARNING, logger="medzoo"):
        cached = build_cache(info, PLAN, tmp_path / "cache", progress=False, skip_bad_cases=True)
    assert [c.case_id for c in cached] == ["case_0", "case_2"]
    skipped = [r.getMessage() for r in caplog.records if "skipping bad case" in r.getMessage()]
    assert len(skipped) == 1 and "case_1" in skipped[0] and "affine" in skipped[0]


def test_interrupt_mid_case_leaves_nothing_half_written(tmp_path, monkeypatch):
    info = make_dataset(tmp_path / "raw", n=3)
    real = cache_mod.class_locations
    calls = []

    def interrupt_on_second(label, num_classes, seed=0):
        calls.append(seed)
        if len(calls) == 2:  # case_1: image and label written, locations and metadata not yet
            raise KeyboardInterrupt
        return real(label, num_classes, seed)

    monkeypatch.setattr(cache_mod, "class_locations", interrupt_on_second)
    with pytest.raises(KeyboardInterrupt):
        build_cache(info, PLAN, tmp_path / "cache", progress=False)
    monkeypatch.setattr(cache_mod, "class_locations", real)
    cache = tmp_path / "cache"
    assert not list(cache.glob(".*")), "temporary files left behind"
    assert [c.case_id for c in load_cache(cache)] == ["case_0"]  # case_1 has no metadata: not a cache entry
    before = (cache / "case_0_image.npy").stat().st_mtime_ns
    cached = build_cache(info, PLAN, cache, progress=False)  # rerun: finishes the job, keeps case_0
    assert [c.case_id for c in cached] == ["case_0", "case_1", "case_2"]
    assert (cache / "case_0_image.npy").stat().st_mtime_ns == before
    assert set(cached[1].class_locations) == {0, 1, 2}


def test_cli_bad_case_one_line_error_and_skip_flag(tmp_path, capsys, caplog):
    from medzoo.data.phantom import make_phantom_dataset

    data = make_phantom_dataset(tmp_path / "ds", cases=3, shape=(16, 18, 12))
    bad = sorted((data / "labelsTr").glob("*.nii.gz"))[1]
    img = nib.load(str(bad))
    lab = np.asarray(img.dataobj).copy()
    lab[0, 0, 0] = 9
    nib.save(nib.Nifti1Image(lab, img.affine), str(bad))
    case_id = bad.name[: -len(".nii.gz")]
    assert main(["-q", "preprocess", str(data), "--out", str(tmp_path / "cache")]) == 1
    err = capsys.readouterr().err.strip().splitlines()  # (after the progress bar) one error line
    assert err[-1].startswith("medzoo preprocess: error: case " + case_id) and "[9]" in err[-1]
    assert not any("Traceback" in line for line in err)
    with caplog.at_level(logging.WARNING, logger="medzoo"):
        assert main(["-q", "preprocess", str(data), "--out", str(tmp_path / "cache"), "--skip-bad-cases"]) == 0
    assert any(f"skipping bad case {case_id}" in r.getMessage() for r in caplog.records)  # the logged skip
    assert sorted(p.name for p in (tmp_path / "cache").glob("*_image.npy")) == sorted(
        p.name.replace(".nii.gz", "_image.npy") for p in (data / "labelsTr").glob("*.nii.gz") if p != bad)
