"""Engine pieces without training: schedules, splits, config, RNG state round trip."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from medzoo.engine.callbacks import EarlyStopping
from medzoo.engine.config import TrainConfig
from medzoo.engine.rng import capture_rng, derive_seed, restore_rng, seed_everything
from medzoo.engine.schedules import create_schedule
from medzoo.engine.splits import load_splits, make_splits, save_splits
from medzoo.errors import ConfigError, DataError


def test_poly_schedule_values():
    s = create_schedule("poly")
    assert s.factor(0, 0.0) == 1.0
    assert s.factor(5, 0.5) == pytest.approx(0.5**0.9)
    assert s.factor(9, 1.0) == 0.0


def test_cosine_with_warmup_values():
    s = create_schedule("cosine", warmup_epochs=3)
    assert [s.factor(e, 0.0) for e in range(3)] == pytest.approx([0.25, 0.5, 0.75])
    assert s.factor(3, 0.0) == pytest.approx(1.0)
    assert s.factor(10, 0.5) == pytest.approx(0.5)
    assert s.factor(20, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert s.factor(10, 0.25) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_step_schedule_values():
    s = create_schedule("step", step_size=10, gamma=0.5)
    assert [s.factor(e, 0) for e in (0, 9, 10, 19, 20, 35)] == pytest.approx([1, 1, 0.5, 0.5, 0.25, 0.125])


def test_plateau_schedule_reduces_and_saves_state():
    s = create_schedule("plateau", plateau_patience=2, gamma=0.1)
    for metric in (0.5, 0.6, 0.6, 0.59):  # best 0.6 then two validations without improvement
        s.observe(metric)
    assert s.factor(4, 0.0) == pytest.approx(0.1)
    s2 = create_schedule("plateau", plateau_patience=2, gamma=0.1)
    s2.load_state_dict(s.state_dict())
    assert s2.factor(0, 0.0) == pytest.approx(0.1)
    with pytest.raises(ConfigError):
        create_schedule("exponential")


def test_single_split_80_20_reproducible_and_order_free():
    ids = [f"case_{i:02d}" for i in range(10)]
    a = make_splits(ids, folds=1, seed=3)
    b = make_splits(list(reversed(ids)), folds=1, seed=3)
    assert a == b
    assert len(a) == 1 and len(a[0]["val"]) == 2 and len(a[0]["train"]) == 8
    assert set(a[0]["val"]).isdisjoint(a[0]["train"])
    assert make_splits(ids, folds=1, seed=4) != a


def test_kfold_disjoint_and_covering(tmp_path):
    ids = [f"c{i}" for i in range(13)]
    folds = make_splits(ids, folds=5, seed=0)
    assert len(folds) == 5
    vals = [set(f["val"]) for f in folds]
    assert set().union(*vals) == set(ids)
    assert sum(len(v) for v in vals) == len(ids)  # pairwise disjoint
    for f in folds:
        assert set(f["train"]) == set(ids) - set(f["val"])
    assert make_splits(ids, folds=5, seed=0) == folds
    save_splits(folds, tmp_path / "splits.json", seed=0)
    assert load_splits(tmp_path / "splits.json") == folds
    with pytest.raises(ConfigError):
        make_splits(ids[:3], folds=5)
    with pytest.raises(DataError):
        make_splits(["a", "a", "b"])


def test_config_roundtrip_and_validation(tmp_path):
    cfg = TrainConfig(data="d", out=str(tmp_path / "r"), patch_size=(8, 16, 8), time_budget="2m",
                      model_kwargs={"features": [4, 8]}, freeze="encoder")
    assert cfg.freeze == ["encoder"] and cfg.budget_seconds == 120.0
    cfg.save(tmp_path / "config.json")
    back = TrainConfig.load(tmp_path / "config.json")
    assert back == cfg
    assert json.loads((tmp_path / "config.json").read_text())["patch_size"] == [8, 16, 8]
    assert TrainConfig(optimizer="sgd").learning_rate == 1e-2
    for bad in ({"optimizer": "lbfgs"}, {"schedule": "x"}, {"fold": 3, "folds": 3}, {"time_budget": "ten"},
                {"epochs": 0}):
        with pytest.raises(ConfigError):
            TrainConfig(**bad)
    with pytest.raises(ConfigError, match="unknown"):
        TrainConfig.from_dict({"data": "x", "colour": "red"})


def test_rng_state_roundtrip_through_weights_only(tmp_path):
    seed_everything(7)
    state = capture_rng()
    torch.save({"rng": state}, tmp_path / "r.pt")
    expected = (torch.rand(3), np.random.rand(2), random.random())
    restore_rng(torch.load(tmp_path / "r.pt", weights_only=True)["rng"])
    got = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]
    assert derive_seed(0, 1) != derive_seed(0, 2) and derive_seed(0, 1) == derive_seed(0, 1)


def test_early_stopping():
    es = EarlyStopping(patience=2)
    assert es.update(0.5, 1) and not es.should_stop
    assert not es.update(0.4, 2) and not es.should_stop
    assert not es.update(float("nan"), 3) and es.should_stop
    assert es.best == 0.5 and es.best_epoch == 1


def test_auto_augmentation_follows_the_expected_number_of_steps():
    """"auto": the light "standard" set for short runs, nnU-Net's "default" set for long ones; explicit wins."""
    from medzoo.engine.budget import Budget
    from medzoo.engine.segment import LIGHT_AUGMENT_MAX_STEPS, resolve_augment

    no_budget = Budget(None, 0.0)
    assert resolve_augment(TrainConfig(epochs=50), no_budget, False) == "standard"  # 2500 steps
    long_run = TrainConfig(epochs=LIGHT_AUGMENT_MAX_STEPS // 50 + 1)
    assert resolve_augment(long_run, no_budget, False) == "default"
    assert resolve_augment(TrainConfig(epochs=50, augment="strong"), no_budget, False) == "strong"
    budget = Budget(1800.0, 0.0)
    budget.step_estimate = 0.5  # 3600 steps in 30 minutes
    assert resolve_augment(TrainConfig(time_budget="30m"), budget, True) == "standard"
    budget.step_estimate = 0.1  # 18000 steps
    assert resolve_augment(TrainConfig(time_budget="30m"), budget, True) == "default"
    assert resolve_augment(TrainConfig(time_budget="30m"), budget, False) == "default"  # no probe: no guess
    with pytest.raises(ConfigError, match="augment must be one of"):
        TrainConfig(augment="heavy")


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "rmsprop"])
def test_cpu_optimizers_are_fused_where_pytorch_has_it_and_update_the_same(optimizer, tmp_path):
    from medzoo.engine.trainer import build_optimizer, fused_optimizer_options

    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(7, 3, generator=gen), torch.randn(5, generator=gen)]
    grads = [[torch.randn(p.shape, generator=gen) for p in start] for _ in range(3)]
    config = TrainConfig(optimizer=optimizer, lr=0.05, weight_decay=1e-3, momentum=0.9)
    results = []
    for fused in (True, False):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        opt = build_optimizer(config, params)
        if not fused:  # the same optimizer on PyTorch's per-parameter path
            for group in opt.param_groups:
                group["fused"], group["foreach"] = None, False
        elif optimizer != "rmsprop":
            assert opt.param_groups[0]["fused"] is True and fused_optimizer_options(params, optimizer) == {"fused": True}
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            opt.step()
        results.append([p.detach() for p in params])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert not torch.equal(results[0][0], start[0])  # the parameters moved
    assert fused_optimizer_options([torch.nn.Parameter(torch.zeros(1, device="meta"))], "sgd") == {}



def test_the_budget_shapes_the_plan_unless_declined(monkeypatch, tmp_path):
    """``--time-budget`` hands the budget to the planner; ``plan_for_budget=False`` keeps the budget-free plan;
    ``--epochs`` never plans for a budget."""
    from medzoo.engine import segment
    from medzoo.planning import fingerprint, planner

    seen = []
    monkeypatch.setattr(planner, "make_plan", lambda info, fp, time_budget=None, **kw: seen.append(time_budget))
    monkeypatch.setattr(fingerprint, "compute_fingerprint", lambda info, progress=False: {})
    for flag in (False, True):
        config = TrainConfig(data="d", out=str(tmp_path / "r"), time_budget="2m", plan_for_budget=flag,
                             regions=False)
        segment.plan_for(config, object(), progress=False)
    segment.plan_for(TrainConfig(data="d", out=str(tmp_path / "r"), time_budget="2m", regions=False), object(),
                     progress=False)
    segment.plan_for(TrainConfig(data="d", out=str(tmp_path / "r"), epochs=3, regions=False), object(),
                     progress=False)
    assert seen == [None, 120.0, 120.0, None]
