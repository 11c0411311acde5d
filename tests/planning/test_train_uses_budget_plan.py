"""``medzoo train --time-budget`` plans for the budget (the plan in the run folder says so and why) and tells
the planner what a step cost."""

from __future__ import annotations

from medzoo.engine.config import TrainConfig
from medzoo.engine.trainer import train
from medzoo.planning import device
from medzoo.planning.device import StepCost
from medzoo.planning.plan import Plan


def test_time_budget_run_records_a_budget_plan(tmp_path, monkeypatch):
    from medzoo.data.phantom import make_phantom_dataset

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    # a machine this slow cannot give the default U-Net enough steps in 20 s: the plan must trade
    def measure(model, spatial_dims, model_kwargs, *args, **kwargs):
        return StepCost(0.05, 2e-5 if model_kwargs["features"][0] == 16 else 0.7e-5)

    monkeypatch.setattr(device, "measure_step_cost", measure)
    monkeypatch.setattr(device, "measure_step", lambda model, dims, kwargs, c_in, classes, batch, patch, *a:
                        measure(model, dims, kwargs).seconds(batch, patch))
    data = make_phantom_dataset(tmp_path / "ph", cases=3, seed=0, shape=(24, 28, 20))
    common = dict(data=str(data), device="cpu", num_workers=0, progress=False, log_images=False,
                  iterations_per_epoch=1)
    told = []
    monkeypatch.setattr(device, "correct_step_price", lambda *args, **kwargs: told.append(args))
    result = train(TrainConfig(out=str(tmp_path / "budget"), time_budget="5s", **common))  # the default: plan for it
    plan = Plan.load(tmp_path / "budget" / "plan.json")
    # the trainer tells the planner what a step really cost, against the price the plan was made with
    price = plan.extra["step_price"]
    assert [args[:2] for args in told] == ([(price["network"], price["step_seconds"])] if result.steps else [])
    assert all(args[2] > 0 for args in told)
    assert plan.extra["planner"].endswith("(budget)")
    assert "steps expected" in plan.extra["reasons"]["budget"]
    assert plan.model_kwargs["features"] == [8, 16, 32, 64]  # width traded first
