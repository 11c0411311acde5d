"""``medzoo plan``: prints the plan and its reasons without training, and can save it."""

from __future__ import annotations

from medzoo.cli import main
from medzoo.planning import device
from medzoo.planning.device import StepCost
from medzoo.planning.plan import Plan


def test_plan_prints_choices_and_reasons(tmp_path, monkeypatch, capsys):
    from medzoo.data.phantom import make_phantom_dataset

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(device, "measure_step_cost", lambda *a, **k: StepCost(0.01, 1e-5))
    monkeypatch.setattr(device, "measure_step", lambda *a, **k: StepCost(0.01, 1e-5).seconds(a[5], a[6]))
    data = make_phantom_dataset(tmp_path / "ph", cases=2, seed=0, shape=(24, 28, 20))
    out = tmp_path / "plan.json"
    assert main(["plan", str(data), "--time-budget", "10m", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for word in ("network", "spacing", "patch", "why:", "budget:"):
        assert word in text
    plan = Plan.load(out)
    assert plan.extra["reasons"]["budget"] and plan.extra["planner"].endswith("(budget)")
    assert list((tmp_path / "cache" / "medzoo" / "planner").glob("device-*.json"))
    assert main(["plan", str(data)]) == 0  # no budget: today's plan, no probe needed
    assert "budget:" not in capsys.readouterr().out
