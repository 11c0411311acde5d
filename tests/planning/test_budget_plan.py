"""The budget-aware planner: the same plan without a budget; under a budget enough steps, at the finest spacing
the smallest structure allows; 2D for thick slices; given settings kept; every choice with a reason."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from medzoo.data.case import Case, DatasetInfo
from medzoo.planning.budgeting import TRAIN_FRACTION, required_steps
from medzoo.planning.device import DeviceProfile, StepCost
from medzoo.planning.planner import make_plan

PER_VOXEL = 2e-6  # seconds per voxel of a default-width U-Net step: about what 2 CPU cores do in fp32


class FakeProfile(DeviceProfile):
    """Step costs from a formula instead of a probe: the narrow U-Net costs a third of the default one."""

    def __init__(self) -> None:
        super().__init__({"device": "cpu"}, {})
        self.asked: list[str] = []

    def cost(self, model, spatial_dims, model_kwargs, in_channels, num_classes) -> StepCost:
        self.asked.append(model)
        narrow = model_kwargs.get("features", [16])[0] < 16
        return StepCost(0.02, PER_VOXEL * (0.35 if narrow else 1.0) * (0.5 if spatial_dims == 2 else 1.0))

    def confirm(self, model, spatial_dims, model_kwargs, in_channels, num_classes, batch, patch) -> float:
        """The chosen plan's step takes what the formula says (no timing, no second round)."""
        return self.cost(model, spatial_dims, model_kwargs, in_channels, num_classes).seconds(batch, patch)


class NoProbe(DeviceProfile):
    def __init__(self) -> None:
        super().__init__({"device": "cpu"}, {})

    def cost(self, *args, **kwargs):
        raise AssertionError("the planner probed a step although nothing was left to choose")


def _info(labels: dict[int, str], modalities=("MRI",)) -> DatasetInfo:
    cases = [Case(f"c{i}", [Path(f"/nonexistent/c{i}.nii.gz")]) for i in range(4)]
    return DatasetInfo(Path("/nonexistent"), "msd", cases, labels, list(modalities))


def _fp(shape, spacing, frequencies, cases=4, **extra):
    return {"shapes": [shape] * cases, "spacings": [spacing] * cases, "class_frequencies": frequencies,
            "class_presence": [1.0] * len(frequencies), **extra}


HIPPO_LABELS = {0: "background", 1: "anterior", 2: "posterior"}
HIPPO = {**_fp((36, 50, 35), (1.0, 1.0, 1.0), [0.95, 0.025, 0.025]),
         "shapes": [(35, 51, 35), (36, 50, 35), (37, 49, 36), (34, 52, 34)]}
BRATS_LABELS = {0: "background", 1: "necrosis", 2: "edema", 3: "non_enhancing", 4: "enhancing"}
BRATS = _fp((240, 240, 155), (1.0, 1.0, 1.0), [0.98, 0.002, 0.01, 0.003, 0.005],
            shapes_after_crop=[(140, 170, 140)] * 4)
# seven organs at risk of about 200 voxels each at 4 x 4 x 2.5 mm, as the head-and-neck CT of the issue
HN = _fp((128, 128, 128), (4.0, 4.0, 2.5), [1 - 7 * 200 / 128**3] + [200 / 128**3] * 7)


def _expected_steps(plan, profile=FakeProfile(), budget=600.0):
    cost = profile.cost(plan.model, plan.spatial_dims, plan.model_kwargs, plan.in_channels, plan.num_classes)
    return TRAIN_FRACTION * budget / cost.seconds(plan.batch_size, plan.patch_size)


def test_no_budget_gives_todays_plan():
    plan = make_plan(_info(HIPPO_LABELS), HIPPO)
    assert (plan.model, plan.patch_size, plan.batch_size, plan.target_spacing) == ("unet3d", (32, 48, 32), 4, None)
    assert plan.model_kwargs == {"features": [16, 32, 64, 128], "deep_supervision": True}
    big = make_plan(_info(BRATS_LABELS, ("flair", "t1c")), BRATS)
    assert (big.patch_size, big.batch_size, big.target_spacing) == ((128, 128, 128), 2, None)
    assert big.extra["planner"] == "medzoo.planning.planner v1"
    assert set(big.extra["reasons"]) >= {"spacing", "network", "patch", "batch"}


def test_a_generous_budget_changes_nothing():
    info = _info(HIPPO_LABELS)
    free, budgeted = make_plan(info, HIPPO), make_plan(info, HIPPO, time_budget=3600, device_profile=FakeProfile())
    for name in ("model", "model_kwargs", "patch_size", "batch_size", "target_spacing", "spatial_dims"):
        assert getattr(budgeted, name) == getattr(free, name), name
    assert "nothing traded" in budgeted.extra["reasons"]["budget"]


def test_hippocampus_keeps_its_plan_at_ten_minutes():
    plan = make_plan(_info(HIPPO_LABELS), HIPPO, time_budget=600, device_profile=FakeProfile())
    assert (plan.patch_size, plan.batch_size, plan.target_spacing) == ((32, 48, 32), 4, None)
    assert plan.model_kwargs["features"] == [16, 32, 64, 128]


def test_large_volumes_get_coarser_spacing_and_enough_steps():
    plan = make_plan(_info(BRATS_LABELS, ("flair", "t1c")), BRATS, time_budget=600, device_profile=FakeProfile())
    need, _ = required_steps(4, plan.batch_size)
    assert _expected_steps(plan) >= need
    assert plan.target_spacing is not None and min(plan.target_spacing) > 1.2  # coarser than native
    assert max(plan.target_spacing) <= 4.0  # within MAX_COARSENING of 1 mm
    # the coarse patch still sees most of the (cropped) brain: at least half of the median case per axis
    seen = [p * s / n for p, s, n in zip(plan.patch_size, plan.target_spacing, (140, 170, 140))]
    assert min(seen) >= 0.4
    assert "mm" in plan.extra["reasons"]["spacing"] and "steps expected" in plan.extra["reasons"]["budget"]
    # a longer budget buys a finer spacing
    longer = make_plan(_info(BRATS_LABELS, ("flair", "t1c")), BRATS, time_budget=3600, device_profile=FakeProfile())
    assert longer.target_spacing is None or max(longer.target_spacing) < max(plan.target_spacing)


def test_small_structures_stop_the_coarsening():
    plan = make_plan(_info({i: f"organ{i}" for i in range(8)}, ("CT",)), HN, time_budget=600,
                     device_profile=FakeProfile())
    # 200 voxels of 40 mm^3 are about 25 mm across: no axis beyond 25 / 8 mm (native 4 mm stays 4 mm)
    assert plan.target_spacing is None or (plan.target_spacing[0] == pytest.approx(4.0)
                                           and plan.target_spacing[2] <= 25.0 / 8 + 0.05)
    need, _ = required_steps(7, plan.batch_size)
    assert need > 1000  # seven classes share the foreground-centred patches
    assert _expected_steps(plan) >= need
    assert math.prod(plan.patch_size) < 64 * 112 * 104  # the patch the run got, 159 steps in 10 minutes


def test_thick_slices_train_2d_unless_told_otherwise():
    fp = _fp((256, 256, 20), (0.9, 0.9, 6.0), [0.9, 0.05, 0.05])
    plan = make_plan(_info(HIPPO_LABELS), fp, time_budget=600, device_profile=FakeProfile())
    assert (plan.spatial_dims, plan.model, plan.slice_axis) == (2, "unet2d", 2)
    assert "2D on slices" in plan.extra["reasons"]["dims"]
    forced = make_plan(_info(HIPPO_LABELS), fp, time_budget=600, device_profile=FakeProfile(), spatial_dims=3)
    assert forced.spatial_dims == 3 and forced.model == "unet3d"
    # many thin slices stay 3D
    thin = make_plan(_info(HIPPO_LABELS), _fp((128, 128, 96), (0.9, 0.9, 3.0), [0.9, 0.05, 0.05]), time_budget=600,
                     device_profile=FakeProfile())
    assert thin.spatial_dims == 3


def test_given_settings_are_kept_and_need_no_probe():
    plan = make_plan(_info(BRATS_LABELS, ("flair", "t1c")), BRATS, time_budget=60, device_profile=NoProbe(),
                     model="unet3d", patch_size=(64, 64, 64), batch_size=3)
    assert (plan.patch_size, plan.batch_size, plan.target_spacing) == ((64, 64, 64), 3, None)
    assert "nothing for the budget to choose" in plan.extra["reasons"]["budget"]
    spaced = make_plan(_info(BRATS_LABELS, ("flair", "t1c")), BRATS, time_budget=60, device_profile=FakeProfile(),
                       target_spacing=(1.0, 1.0, 1.0))
    assert spaced.target_spacing == (1.0, 1.0, 1.0)


def test_without_class_sizes_the_spacing_stays_native():
    fp = {"shapes": [(240, 240, 155)] * 4, "spacings": [(1.0, 1.0, 1.0)] * 4}
    plan = make_plan(_info(BRATS_LABELS), fp, time_budget=600, device_profile=FakeProfile())
    assert plan.target_spacing is None
    assert "structure sizes unknown" in plan.extra["reasons"]["spacing"]


def test_a_budget_plan_records_the_price_of_its_step():
    # the trainer compares this price with the steps it measures (planning.device.correct_step_price)
    profile = FakeProfile()
    plan = make_plan(_info(BRATS_LABELS, ("flair", "t1c")), BRATS, time_budget=600, device_profile=profile)
    price = plan.extra["step_price"]
    cost = profile.cost(plan.model, 3, plan.model_kwargs, plan.in_channels, plan.num_classes)
    assert price["step_seconds"] == pytest.approx(cost.seconds(plan.batch_size, plan.patch_size))
    assert price["network"].startswith("unet3d/3d/") and '"features": [8, 16, 32, 64]' in price["network"]
    assert "step_price" not in make_plan(_info(BRATS_LABELS, ("flair", "t1c")), BRATS).extra


def test_resolution_is_kept_when_cheaper_trades_give_enough_steps():
    # default U-Net: about 400 steps in 400 s, too few; the narrow one gets about 1100: enough, so neither the
    # spacing nor the field of view is given up
    plan = make_plan(_info(HIPPO_LABELS), _fp((64, 64, 48), (1.0, 1.0, 1.0), [0.9, 0.05, 0.05]), time_budget=400,
                     device_profile=FakeProfile())
    assert plan.model_kwargs["features"] == [8, 16, 32, 64]
    assert (plan.target_spacing, plan.patch_size, plan.batch_size) == (None, (64, 64, 48), 2)
    assert _expected_steps(plan, budget=400) >= required_steps(2, 2)[0]


def test_a_coarser_spacing_never_widens_the_field_of_view():
    # a CT whose median case exceeds the patch cap: at a coarser spacing the case is still larger than the cap,
    # so the patch must shrink with the spacing to save voxels (and steps) instead of seeing more
    labels = {0: "background", 1: "liver", 2: "kidney", 3: "spleen"}
    ct = _fp((512, 512, 120), (0.75, 0.75, 3.0), [0.9, 0.06, 0.02, 0.02])
    free = make_plan(_info(labels, ("CT",)), ct)
    plan = make_plan(_info(labels, ("CT",)), ct, time_budget=600, device_profile=FakeProfile())
    assert plan.target_spacing is not None and plan.target_spacing[0] > 0.75
    for p, s, p0, s0 in zip(plan.patch_size, plan.target_spacing, free.patch_size, (0.75, 0.75, 3.0)):
        assert p * s <= p0 * s0 + 1e-6
    assert _expected_steps(plan) >= required_steps(3, plan.batch_size)[0]


def test_a_plan_whose_timed_step_is_off_its_price_is_made_again(monkeypatch):
    # the probe's line prices a step at half what it takes: the plan made on it would get half its steps; the
    # planner times the chosen step, adds it to the curve and plans again, cheaper
    from medzoo.planning import device

    line = StepCost(0.02, PER_VOXEL * 0.35)
    timed = []

    def measure_step(model, spatial_dims, model_kwargs, in_channels, num_classes, batch, patch, device="cpu"):
        timed.append(batch * math.prod(patch))
        return 2 * line.seconds(batch, patch)

    monkeypatch.setattr(device, "measure_step_cost", lambda *a, **k: line)
    monkeypatch.setattr(device, "measure_step", measure_step)
    profile = DeviceProfile({"device": "cpu"}, {})
    info = _info(BRATS_LABELS, ("flair", "t1c"))
    plan = make_plan(info, BRATS, time_budget=600, device_profile=profile)
    naive = make_plan(info, BRATS, time_budget=600, device_profile=FakeProfile())
    assert len(timed) >= 2 and timed[-1] < timed[0]  # timed, re-planned smaller, timed again
    price = plan.extra["step_price"]["step_seconds"]
    assert price == pytest.approx(2 * line.seconds(plan.batch_size, plan.patch_size))
    steps = TRAIN_FRACTION * 600 / price
    need, _ = required_steps(plan.num_classes - 1, plan.batch_size)
    assert steps >= 0.8 * need  # what the naive plan would have got: about half
    assert TRAIN_FRACTION * 600 / (2 * line.seconds(naive.batch_size, naive.patch_size)) < 0.7 * need
    reason = plan.extra["reasons"]["budget"]
    assert "a step of this plan timed" in reason and "first priced at" in reason
    key = plan.extra["step_price"]["network"]
    assert (float(timed[-1]), pytest.approx(price)) in profile.networks[key].points


def test_a_plan_whose_step_takes_its_price_is_timed_once(monkeypatch):
    from medzoo.planning import device

    line = StepCost(0.02, PER_VOXEL * 0.35)
    timed = []
    monkeypatch.setattr(device, "measure_step_cost", lambda *a, **k: line)
    monkeypatch.setattr(device, "measure_step",
                        lambda *a, **k: timed.append(a) or 1.1 * line.seconds(a[5], a[6]))
    plan = make_plan(_info(BRATS_LABELS, ("flair", "t1c")), BRATS, time_budget=600,
                     device_profile=DeviceProfile({"device": "cpu"}, {}))
    assert len(timed) == 1
    assert plan.extra["step_price"]["step_seconds"] == pytest.approx(1.1 * line.seconds(plan.batch_size,
                                                                                          plan.patch_size))
