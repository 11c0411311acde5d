"""A ``time_budget`` holds for any network, however slow: a stub network whose forward pass costs time in
proportion to the voxels it sees stands in for the full-resolution dense nets whose single step or validation
used to outlast the budget by minutes. The time is a fake clock's (:mod:`support.clock`) that only the stub
moves, so the budget's decisions are checked exactly and alike on any machine; how long a real run takes past
its budget is measured by ``benchmarks/time_to_dice.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import medzoo.engine.budget as budget_module
import medzoo.engine.trainer as trainer_module
from medzoo.engine.budget import Budget, calibrate_budget, probe_forward_seconds
from medzoo.engine.config import TrainConfig
from medzoo.engine.trainer import train
from medzoo.models.layers.factories import make_conv
from medzoo.models.registry import _REGISTRY, ModelCard, _Entry
from support.clock import FakeClock

SHAPE = (24, 28, 20)
PATCH = (16, 16, 16)


class SleepyNet(nn.Module):
    """A 1x1x1 conv whose every forward moves ``clock`` by ``seconds_per_voxel`` per input voxel (batch
    included)."""

    clock: FakeClock  # set by the ``sleepy`` fixture

    def __init__(self, in_channels: int, num_classes: int, spatial_dims: int = 3,
                 seconds_per_voxel: float = 1e-5) -> None:
        super().__init__()
        self.conv = make_conv(spatial_dims, in_channels, num_classes, 1)
        self.norm = nn.BatchNorm3d(num_classes) if spatial_dims == 3 else nn.BatchNorm2d(num_classes)
        self.seconds_per_voxel = seconds_per_voxel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_meta:  # a shape-only pass on the meta device computes nothing, so costs nothing
            self.clock.advance(self.seconds_per_voxel * x.shape[0] * x[0, 0].numel())
        return self.norm(self.conv(x))


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    """The time the trainer and its budget see, for the duration of one test: moved only by :class:`SleepyNet`."""
    clock = FakeClock().install(monkeypatch, trainer_module, budget_module)
    monkeypatch.setattr(SleepyNet, "clock", clock, raising=False)
    return clock


@pytest.fixture
def sleepy(monkeypatch, clock) -> str:
    """Registers ``sleepy_test`` for the duration of one test."""
    name = "sleepy_test"
    card = ModelCard(name=name, spatial_dims=(2, 3), paper="test stub", typical_patch=PATCH)
    monkeypatch.setitem(_REGISTRY, name, _Entry(SleepyNet, card))
    return name


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    from medzoo.data.phantom import make_phantom_dataset

    return make_phantom_dataset(tmp_path_factory.mktemp("phantom"), cases=5, seed=0, shape=SHAPE)


def _config(data: Path, out: Path, model: str, seconds_per_voxel: float, budget: float, **kw) -> TrainConfig:
    # the trainer's budget alone: the planner's budget fitting would price the stub's steps on the real clock
    # (and correct the user's cached step prices with the fake clock's)
    return TrainConfig(data=str(data), out=str(out), model=model,
                       model_kwargs={"seconds_per_voxel": seconds_per_voxel}, time_budget=budget,
                       patch_size=PATCH, batch_size=2, device="cpu", num_workers=0, progress=False,
                       log_images=False, plan_for_budget=False, **kw)


def test_a_step_longer_than_the_budget_is_never_started(phantom, tmp_path, sleepy):
    # One training step costs 2 * 16^3 * 2e-3 = 16 s and one validation 12 windows * 8 s = 98 s; before the
    # forward-pass probe the first step and a full validation ran regardless (~2 minutes for a 6 s budget).
    budget = 6.0
    result = train(_config(phantom, tmp_path / "run", sleepy, 2e-3, budget))
    assert result.seconds <= budget, f"{result.seconds:.1f}s for a {budget}s budget"
    assert result.steps == 0 and result.stop_reason == "time_budget"
    assert (tmp_path / "run" / "checkpoint_last.pt").is_file()  # the run folder still predicts / resumes


def test_slow_validation_is_budgeted_before_it_is_measured(phantom, tmp_path, sleepy):
    # A step costs ~0.16 s, a validation 12 windows * 0.08 s (~1 s, more than six steps): the run trains,
    # validates after each 3-step epoch and stops within the budget.
    budget = 7.0
    result = train(_config(phantom, tmp_path / "run", sleepy, 2e-5, budget, iterations_per_epoch=3))
    assert result.seconds <= budget, f"{result.seconds:.1f}s for a {budget}s budget"
    assert result.steps > 0 and result.stop_reason == "time_budget"
    assert "val_dice_mean" in result.final_metrics


def test_probe_changes_nothing_and_costs_the_patch(sleepy, clock):
    from medzoo.models import create_model
    from medzoo.planning.plan import Plan

    torch.manual_seed(0)
    k = 2e-5  # the stub's seconds per voxel
    net = create_model(sleepy, in_channels=2, num_classes=3, seconds_per_voxel=k).train()
    before = {name: v.clone() for name, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    plan = Plan(model=sleepy, in_channels=2, num_classes=3, spatial_dims=3, patch_size=(32, 32, 32),
                batch_size=2)
    seconds = probe_forward_seconds(net, plan, torch.device("cpu"))
    assert net.training
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[name], v) for name, v in net.state_dict().items())
    # A 32^3 window costs 0.66 s (the probe's 1 s allowance reaches the whole patch).
    assert seconds == pytest.approx(k * 32**3)
    # With 0.1 s allowed it stops at 16^3 (the whole patch would take ~0.66 s) and scales that up.
    probed_until = clock.now
    scaled = probe_forward_seconds(net, plan, torch.device("cpu"), max_probe_seconds=0.1)
    assert scaled == pytest.approx(k * 32**3)
    assert clock.now - probed_until < k * 32**3  # it never ran the whole patch

    class Case:  # one validation case of 40x40x40: 2 windows per axis at overlap 0.5 -> 8 windows
        image = torch.zeros(2, 40, 40, 40)

    budget = Budget(100.0, clock.now)
    optimizer = torch.optim.AdamW(net.parameters())
    calibrate_budget(budget, net, optimizer, plan, [Case()], torch.device("cpu"), overlap=0.5)
    step = 2 * k * 32**3  # the stub costs time in forward only; the estimate allows for a backward pass
    assert budget.step_estimate == pytest.approx(2.5 * step)
    validation = 8 * k * 32**3  # 8 windows of 32^3
    assert budget.val_estimate == pytest.approx(validation)
    assert budget.next_step() == budget.step_estimate  # until a step is measured
    budget.record_step(0.25)
    assert budget.next_step() == 0.25
    # the probe's validation estimate is corrected by the probe's measured error on a step
    assert budget.validation_seconds() == pytest.approx(budget.val_estimate * 0.25 / budget.step_estimate)
