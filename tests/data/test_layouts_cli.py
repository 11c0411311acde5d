"""Every public layout trains and predicts through ``medzoo train --layout NAME`` and ``medzoo predict``.

Tiny fake copies of the brats, iseg, mrbrains, folder and csv layouts (real file names and formats, an
oblique anisotropic grid for NIfTI, an anisotropic one for Analyze) with a labelled blob per case. Each is
trained for two steps with a tiny U-Net, then its unlabelled cases are predicted through
``medzoo predict --input ROOT --layout NAME`` (the layout's modality files as channels, in its order).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medzoo.cli import main
from medzoo.data.layouts import OPTIONS_FILE, load_dataset
from medzoo.data.loading import load_image
from medzoo.io.readers import read_volume, volume_suffix
from support.layouts import oblique_affine, save_analyze, save_nii

SHAPE = (20, 24, 16)
AFFINE = oblique_affine((0.9, 1.3, 2.2))


def blob_label(values: list[int], n: int) -> np.ndarray:
    """Nested boxes carrying ``values[1:]`` (background ``values[0]``), shifted a little per case."""
    lab = np.full(SHAPE, values[0], dtype=np.int16)
    for k, v in enumerate(values[1:]):
        lo = np.array([3 + n, 4 + k, 3]) + k
        hi = lo + np.array([12 - 2 * k, 14 - 2 * k, 9 - 2 * k])
        lab[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = v
    return lab


def image_for(lab: np.ndarray, modality: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(100 * n + modality)
    img = rng.normal(50.0 + 10 * modality, 5.0, SHAPE).astype(np.float32)
    img += (lab.astype(np.float32) % 17) * (3.0 + modality)  # label-dependent contrast per modality
    return img


def write_case(paths: list[Path], label_path: Path | None, values: list[int], n: int, writer) -> None:
    lab = blob_label(values, n)
    for m, p in enumerate(paths):
        writer(p, image_for(lab, m, n))
    if label_path is not None:
        writer(label_path, lab.astype(np.uint8) if max(values) < 256 else lab)


def nii(path: Path, data: np.ndarray) -> None:
    save_nii(path, data, AFFINE)


# ------------------------------------------------------------------------------------ layout builders
# Each returns (data argument for --data, layout name, declared classes, labelled ids, unlabelled ids).


def build_brats(root: Path):
    mods = ["t1", "t1ce", "t2", "flair"]
    ids = ["BraTS2021_00001", "BraTS2021_00002", "BraTS2021_00003", "BraTS2021_00100"]
    for n, cid in enumerate(ids):
        folder = root / ("HGG" if n < 3 else "") / cid
        label = folder / f"{cid}_seg.nii.gz" if n < 3 else None
        write_case([folder / f"{cid}_{m}.nii.gz" for m in mods], label, [0, 1, 2, 4], n, nii)
    return root, "brats", 4, ids[:3], ids[3:]


def build_iseg(root: Path):
    def analyze(path: Path, data: np.ndarray) -> None:
        save_analyze(path, data)

    for s in (1, 2, 3, 11):
        label = root / f"subject-{s}-label.hdr" if s < 11 else None
        write_case([root / f"subject-{s}-T1.hdr", root / f"subject-{s}-T2.hdr"], label, [0, 10, 150, 250], s, analyze)
    return root, "iseg", 4, ["subject-1", "subject-2", "subject-3"], ["subject-11"]


def build_mrbrains(root: Path):
    files = ["pre/reg_T1.nii.gz", "pre/reg_IR.nii.gz", "pre/FLAIR.nii.gz"]
    for n, sid in enumerate(["1", "4", "7", "148"]):
        label = root / sid / "segm.nii.gz" if n < 3 else None
        write_case([root / sid / f for f in files], label, [0, 1, 3, 5, 9], n, nii)  # 9 -> background
    return root, "mrbrains", 9, ["1", "4", "7"], ["148"]


def build_folder(root: Path):
    for n, cid in enumerate(["p1", "p2", "p3", "p9"]):
        label = root / "masks" / f"{cid}_mask.nii.gz" if n < 3 else None
        write_case([root / "scans" / cid / "flair.nii.gz", root / "scans" / cid / "t1.nii.gz"], label,
                   [0, 3, 7], n, nii)
    (root / OPTIONS_FILE).write_text(
        '{"layout": "folder", "images": {"flair": "scans/{case}/flair.nii.gz", "t1": "scans/{case}/t1.nii.gz"},'
        ' "label": "masks/{case}_mask.nii.gz"}'
    )
    return root, "folder", 3, ["p1", "p2", "p3"], ["p9"]


def build_csv(root: Path):
    rows = ["case_id,t2,t1,label"]
    for n, cid in enumerate(["a", "b", "c", "z"]):
        label = root / "seg" / f"{cid}.nii.gz" if n < 3 else None
        write_case([root / "img" / f"{cid}_t2.nii.gz", root / "img" / f"{cid}_t1.nii.gz"], label, [0, 1, 2], n, nii)
        rows.append(f"{cid},img/{cid}_t2.nii.gz,img/{cid}_t1.nii.gz," + (f"seg/{cid}.nii.gz" if label else ""))
    (root / "cases.csv").write_text("\n".join(rows) + "\n")
    return root / "cases.csv", "csv", 3, ["a", "b", "c"], ["z"]


BUILDERS = {"brats": build_brats, "iseg": build_iseg, "mrbrains": build_mrbrains, "folder": build_folder,
            "csv": build_csv}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_layout_trains_and_predicts_through_cli(tmp_path, name):
    data, layout, classes, train_ids, test_ids = BUILDERS[name](tmp_path / "raw")
    info = load_dataset(data, layout=layout)
    assert info.layout == layout and info.num_classes == classes
    assert [c.case_id for c in info.cases] == train_ids and [c.case_id for c in info.test_cases] == test_ids

    run = tmp_path / "run"
    code = main([
        "train", "--data", str(data), "--layout", layout, "--out", str(run), "--model", "unet3d",
        "--model-arg", "features=[4,8]", "--epochs", "1", "--iterations", "2", "--batch-size", "1",
        "--patch-size", "16", "16", "16", "--num-workers", "0", "--device", "cpu", "--no-progress",
    ])  # fmt: skip
    assert code == 0
    assert (run / "checkpoint_last.pt").is_file()
    assert sorted(p.name for p in (run / "cache").glob("*_image.npy")) == sorted(f"{i}_image.npy" for i in train_ids)

    pred = tmp_path / "pred"
    assert main(["predict", "--model", str(run), "--input", str(data), "--layout", layout, "--output", str(pred),
                 "--device", "cpu", "--no-progress"]) == 0
    assert len(list(pred.iterdir())) == len(test_ids)
    for case in info.test_cases:
        image = load_image(case, info.modalities)  # the layout's own reading of the scan
        suffix = volume_suffix(case.image_paths[0])
        out = pred / f"{case.case_id}{'.nii.gz' if suffix == '.hdr' else suffix}"
        prediction = read_volume(out)
        assert prediction.spatial_shape == image.spatial_shape == SHAPE
        np.testing.assert_allclose(prediction.affine, image.affine, atol=1e-4)
        values = set(np.unique(prediction.array).tolist())
        # brats declares the WT/TC/ET regions: a region run paints the dataset's own values 0/1/2/4
        assert values <= ({0, 1, 2, 4} if layout == "brats" else set(range(classes))), values


def test_layout_options_from_the_command_line(tmp_path):
    """The folder layout's patterns given as --layout-option flags (no options file) for train and predict."""
    data, layout, classes, train_ids, test_ids = build_folder(tmp_path / "raw")
    (data / OPTIONS_FILE).unlink()
    options = ["--layout-option", 'images={"flair": "scans/{case}/flair.nii.gz", "t1": "scans/{case}/t1.nii.gz"}',
               "--layout-option", "label=masks/{case}_mask.nii.gz"]
    run, pred = tmp_path / "run", tmp_path / "pred"
    assert main([
        "train", "--data", str(data), "--layout", "folder", *options, "--out", str(run), "--model", "unet3d",
        "--model-arg", "features=[4,8]", "--epochs", "1", "--iterations", "1", "--batch-size", "1",
        "--patch-size", "16", "16", "16", "--num-workers", "0", "--device", "cpu", "--no-progress",
    ]) == 0  # fmt: skip
    assert sorted(p.name for p in (run / "cache").glob("*_image.npy")) == sorted(f"{i}_image.npy" for i in train_ids)
    assert main(["predict", "--model", str(run), "--input", str(data), "--layout", "folder", *options,
                 "--output", str(pred), "--device", "cpu", "--no-progress"]) == 0
    assert sorted(p.name for p in pred.iterdir()) == [f"{i}.nii.gz" for i in test_ids]
