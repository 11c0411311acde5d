"""Ignore label (sparse annotation) and nnU-Net v2 region datasets: layouts, label mapping, samplers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medzoo.data.cache import CachedCase, class_locations
from medzoo.data.layouts import load_dataset
from medzoo.data.loading import load_case
from medzoo.data.sampling import crop_with_padding, get_sampler
from medzoo.errors import DataError
from medzoo.metrics import dice_per_class
from medzoo.utils import IGNORE_INDEX
from support.layouts import SHAPE, channel, make_nnunet, save_nii


def _nnunet(root, labels: dict, values, extra=None):
    make_nnunet(root)
    meta = json.loads((root / "dataset.json").read_text())
    meta.update({"labels": labels, **(extra or {})})
    (root / "dataset.json").write_text(json.dumps(meta))
    lab = np.zeros(SHAPE, np.uint8)
    lab.reshape(-1)[: len(values) * 5] = np.repeat(values, 5)
    for cid in ("BRATS_1", "BRATS_2", "BRATS_10"):
        save_nii(root / "labelsTr" / f"{cid}.nii.gz", lab)
    return root, lab


def test_nnunet_ignore_label_maps_to_ignore_index(tmp_path):
    root, raw = _nnunet(tmp_path / "d", {"background": 0, "edema": 1, "tumor": 3, "ignore": 4}, [0, 1, 3, 4])
    info = load_dataset(root)
    assert info.ignore_label == 4 and info.labels == {0: "background", 1: "edema", 2: "tumor"}
    _, label = load_case(info.cases[0], info)
    assert (label.array[0][raw == 4] == IGNORE_INDEX).all() and (label.array[0][raw == 3] == 2).all()


def test_ignore_label_option_removes_a_class_and_shifts_the_rest(tmp_path):
    root, raw = _nnunet(tmp_path / "d", {"background": 0, "a": 1, "b": 2, "c": 3}, [0, 1, 2, 3])
    info = load_dataset(root, ignore_label=2)
    assert info.labels == {0: "background", 1: "a", 2: "c"}
    assert info.label_mapping == {0: 0, 1: 1, 3: 2, 2: IGNORE_INDEX}
    _, label = load_case(info.cases[0], info)
    assert (label.array[0][raw == 2] == IGNORE_INDEX).all() and (label.array[0][raw == 3] == 2).all()
    with pytest.raises(DataError, match="background"):
        load_dataset(root, ignore_label=0)


def test_nnunet_region_dataset_declares_every_value_and_the_order(tmp_path):
    labels = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3}
    root, _ = _nnunet(tmp_path / "d", labels, [0, 1, 2, 3], {"regions_class_order": [1, 2, 3]})
    info = load_dataset(root)
    assert sorted(info.labels) == [0, 1, 2, 3] and info.regions_class_order == [1, 2, 3]
    assert info.regions == {"whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}
    load_case(info.cases[0], info)  # values 1 and 2, named only through regions, are declared


def _sparse_case(seed=0):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, size=(20, 18, 16)).astype(np.uint8)
    label[:, :, 2:] = IGNORE_INDEX  # annotation on two slices only
    image = channel(1.0)[None]
    return CachedCase("c", image, label, {}, class_locations(label, 3))


@pytest.mark.parametrize("name", ["uniform", "foreground", "class_balanced"])
def test_samplers_centre_patches_on_annotation(name):
    case = _sparse_case()
    sampler, rng = get_sampler(name), np.random.default_rng(0)
    for i in range(60):
        centre = sampler(case, (6, 6, 4), rng, force_foreground=bool(i % 2))
        patch = crop_with_padding(case.label, centre, (6, 6, 4))
        assert (patch != IGNORE_INDEX).any()


def test_validation_dice_skips_ignored_reference_voxels():
    ref = np.array([0, 1, 1, 2, IGNORE_INDEX, IGNORE_INDEX])
    pred = np.array([0, 1, 1, 2, 2, 1])  # wrong only where the reference is not annotated
    assert np.array_equal(dice_per_class(pred, ref, 3), [1.0, 1.0, 1.0])
