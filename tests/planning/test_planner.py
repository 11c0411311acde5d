"""The planner: patch from the median shape under the model's size rule, spacing, normalisation, 2D."""

from __future__ import annotations

from pathlib import Path

import pytest

from medzoo.data.case import Case, DatasetInfo
from medzoo.errors import ConfigError
from medzoo.planning.plan import Plan
from medzoo.planning.planner import make_plan


def _info(modalities=("T1",), labels=None) -> DatasetInfo:
    labels = labels or {0: "background", 1: "anterior", 2: "posterior"}
    cases = [Case(f"c{i}", [Path(f"/nonexistent/c{i}.nii.gz")]) for i in range(4)]
    return DatasetInfo(Path("/nonexistent"), "msd", cases, labels, list(modalities))


def _fp(shapes, spacings):
    return {"shapes": shapes, "spacings": spacings}


HIPPO = _fp([(35, 51, 35), (36, 50, 35), (37, 49, 36), (34, 52, 34)], [(1.0, 1.0, 1.0)] * 4)


def test_hippocampus_like_plan():
    plan = make_plan(_info(), HIPPO)
    assert plan.model == "unet3d"
    assert plan.patch_size == (32, 48, 32)  # rounded down: no padding in the patches
    assert plan.batch_size == 4
    assert plan.target_spacing is None
    assert plan.normalization == ["zscore"]
    assert plan.num_classes == 3 and plan.in_channels == 1
    assert 2 <= plan.batch_size <= 8
    assert plan.labels == {0: "background", 1: "anterior", 2: "posterior"}
    # JSON round trip keeps the plan equal (what the predictor reads back)
    assert Plan.from_dict(__import__("json").loads(__import__("json").dumps(plan.to_dict()))) == plan


def test_anisotropic_spacing_gives_median_target_and_resampled_patch():
    fp = _fp([(100, 100, 20)] * 3, [(0.8, 0.8, 5.0), (1.0, 1.0, 5.0), (0.9, 0.9, 4.0)])
    plan = make_plan(_info(), fp)
    assert plan.target_spacing == pytest.approx((0.9, 0.9, 5.0))
    # median resampled shape is about (100, 100, 20) * spacing / target -> capped by the size rule
    assert all(p % 8 == 0 for p in plan.patch_size)
    assert plan.patch_size[2] == 16


def test_large_shapes_are_capped():
    plan = make_plan(_info(), _fp([(512, 512, 300)] * 2, [(1.0, 1.0, 1.0)] * 2))
    assert max(plan.patch_size) <= 128
    assert plan.patch_size[0] * plan.patch_size[1] * plan.patch_size[2] <= 128**3


def test_ct_normalisation_and_channels():
    plan = make_plan(_info(modalities=("CT", "PET")), HIPPO)
    assert plan.normalization == ["ct", "zscore"]
    assert plan.in_channels == 2


def test_2d_model_and_context_slices():
    plan = make_plan(_info(), HIPPO, model="unet2d", context_slices=1)
    assert plan.spatial_dims == 2
    assert len(plan.patch_size) == 2 and all(p % 16 == 0 for p in plan.patch_size)
    assert plan.patch_size == (32, 48)  # in-plane axes 0 and 1 of (36, 50, 35) rounded down, slicing axis 2
    assert plan.in_channels == 3 and plan.context_slices == 1


def test_overrides_and_invalid_patch():
    plan = make_plan(_info(), HIPPO, patch_size=(32, 32, 32), batch_size=3, model_kwargs={"features": [4, 8]})
    assert plan.patch_size == (32, 32, 32) and plan.batch_size == 3
    assert plan.model_kwargs["features"] == [4, 8]
    with pytest.raises(ConfigError, match="nearest valid"):
        make_plan(_info(), HIPPO, patch_size=(30, 32, 32))
    with pytest.raises(ConfigError, match="unknown plan"):
        make_plan(_info(), HIPPO, colour="red")


def test_plan_from_files_without_fingerprint(tmp_path):
    from medzoo.data.layouts import load_dataset
    from medzoo.data.phantom import make_phantom_dataset

    root = make_phantom_dataset(tmp_path / "ph", cases=2, seed=1, shape=(20, 26, 18))
    plan = make_plan(load_dataset(root))
    assert plan.in_channels == 2 and plan.num_classes == 4
    assert plan.patch_size == (16, 24, 16)  # (20, 26, 18) rounded down to multiples of 8
    assert plan.modalities == ["T1", "T2"]


def test_crop_to_nonzero_when_it_shrinks_cases():
    fp = {**HIPPO, "shapes_after_crop": [(20, 30, 20)] * 4}
    plan = make_plan(_info(), fp)
    assert plan.crop_to_nonzero and plan.patch_size == (16, 24, 16)
    assert not make_plan(_info(), {**HIPPO, "shapes_after_crop": HIPPO["shapes"]}).crop_to_nonzero
