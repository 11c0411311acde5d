"""Mirroring is planned: never along the left-right axis when labels come in left/right pairs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medzoo.data.case import Case, DatasetInfo
from medzoo.data.layouts import load_dataset
from medzoo.data.loading import load_case
from medzoo.data.phantom import make_phantom_dataset
from medzoo.inference.predictor import PredictOptions
from medzoo.planning.fingerprint import compute_fingerprint, left_right_axis
from medzoo.planning.plan import Plan
from medzoo.planning.planner import choose_mirror_axes, make_plan, side_pairs
from medzoo.transforms.augment import build_augmentation


@pytest.mark.parametrize("names, pair", [
    (["liver", "kidney_left", "kidney_right"], ("kidney_left", "kidney_right")),
    (["Left-Putamen", "Right-Putamen", "Brain-Stem"], ("Left-Putamen", "Right-Putamen")),
    (["Kidney_L", "Kidney_R"], ("Kidney_L", "Kidney_R")),
    (["right adrenal gland", "left adrenal gland"], ("right adrenal gland", "left adrenal gland")),
    (["LeftHippocampus", "RightHippocampus"], ("LeftHippocampus", "RightHippocampus")),
])
def test_side_pairs_are_found_in_the_usual_spellings(names, pair):
    assert side_pairs(names) == [pair]


@pytest.mark.parametrize("names", [
    ["Anterior", "Posterior"],            # hippocampus: no sides
    ["lung_left", "liver"],               # one side only: a flip cannot swap it with another label
    ["L1", "L2", "T12"],                  # vertebrae, not sides
    ["left kidney", "right adrenal"],     # different organs
])
def test_no_side_pairs(names):
    assert side_pairs(names) == []


def test_choose_mirror_axes_leaves_out_the_left_right_axis():
    labels = {0: "background", 1: "kidney_left", 2: "kidney_right"}
    axes, why = choose_mirror_axes(labels, lambda: [0], 3, 2)
    assert axes == (1, 2) and "kidney_left/kidney_right" in why
    assert choose_mirror_axes(labels, lambda: [1], 3, 2)[0] == (0, 2)
    # 2D on axial slices (axis 2): in-plane axes are volume axes 0 and 1, the first runs left-right
    assert choose_mirror_axes(labels, lambda: [0], 2, 2)[0] == (1,)
    # sagittal slices: no in-plane axis runs left-right
    assert choose_mirror_axes(labels, lambda: [0], 2, 0)[0] is None

    def never():
        raise AssertionError("the geometry is read only when a pair is found")

    assert choose_mirror_axes({0: "background", 1: "anterior", 2: "posterior"}, never, 3, 2) == (
        None, "every axis: no two labels are a left/right pair")


def test_left_right_axis_follows_the_affine_not_the_array_order():
    affine = np.zeros((4, 4))
    affine[3, 3] = 1
    affine[1, 0], affine[0, 2], affine[2, 1] = 0.8, -0.9, 3.0  # voxel axis 2 runs along world x (LPS-like sign)
    assert left_right_axis(affine) == 2
    assert left_right_axis(np.diag([-0.7, 0.7, 2.5, 1.0])) == 0


def _info(labels) -> DatasetInfo:
    cases = [Case(f"c{i}", [Path(f"/nonexistent/c{i}.nii.gz")]) for i in range(3)]
    return DatasetInfo(Path("/nonexistent"), "msd", cases, labels, ["CT"])


def test_make_plan_records_the_mirror_axes_and_why():
    fp = {"shapes": [[64, 64, 40]] * 3, "spacings": [[0.8, 0.8, 3.0]] * 3, "left_right_axes": [1, 1, 1]}
    plan = make_plan(_info({0: "background", 1: "kidney_right", 2: "kidney_left"}), fp)
    assert plan.mirror_axes == (0, 2)
    assert "volume axis 1" in plan.extra["reasons"]["mirroring"]
    assert make_plan(_info({0: "background", 1: "liver"}), fp).mirror_axes is None
    assert make_plan(_info({0: "background", 1: "kidney_right", 2: "kidney_left"}), fp,
                     mirror_axes=(0, 1, 2)).mirror_axes == (0, 1, 2)


def test_multi_organ_phantom_plans_no_left_right_flip(tmp_path):
    data = make_phantom_dataset(tmp_path / "mo", cases=2, kind="multi-organ", shape=(48, 48, 16))
    info = load_dataset(str(data))
    fp = compute_fingerprint(info)
    _, label = load_case(info.cases[0], info)
    assert fp["left_right_axes"] == [left_right_axis(label.affine)] * 2
    plan = make_plan(info, fp)
    lateral = fp["left_right_axes"][0]
    assert plan.mirror_axes == tuple(a for a in range(3) if a != lateral)
    # a fingerprint computed before the field existed: the axes are read from the files
    old = {k: v for k, v in fp.items() if k != "left_right_axes"}
    assert make_plan(info, old).mirror_axes == plan.mirror_axes


def test_augmentation_flips_only_the_allowed_axes():
    for name in ("default", "standard", "strong"):
        aug = build_augmentation(name, (16, 16, 16), flip_axes=(1, 2))
        assert aug.spatial.flip_axes == (1, 2)
        g = torch.Generator().manual_seed(0)
        drawn = {a for _ in range(200) for a in aug.spatial.sample(g).flips}
        assert drawn == {1, 2}
    assert build_augmentation("default", (16, 16, 16)).spatial.flip_axes == (0, 1, 2)


def test_tta_mirrors_what_the_plan_allows_and_old_plans_every_axis():
    plan = Plan(model="unet3d", in_channels=1, num_classes=3, mirror_axes=(1, 2))
    assert PredictOptions(tta=True).mirror_axes_for(plan) == (1, 2)
    assert PredictOptions(tta=False).mirror_axes_for(plan) is None
    assert PredictOptions(tta=True, mirror_axes=(0,)).mirror_axes_for(plan) == (0,)
    old = {k: v for k, v in plan.to_dict().items() if k != "mirror_axes"}  # a plan.json from before the field
    assert PredictOptions(tta=True).mirror_axes_for(Plan.from_dict(old)) == (0, 1, 2)
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
