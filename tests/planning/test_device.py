"""The step-time probe: a curve through timed steps (a line beyond them), cached per machine, validated on read;
the planner's timed step of its plan adds a point."""

from __future__ import annotations

import json
import logging

import pytest

from medzoo.planning import device
from medzoo.planning.device import DeviceProfile, StepCost, device_profile, measure_step_cost


def test_measured_cost_grows_with_voxels():
    cost = measure_step_cost("unet3d", 3, {"features": [4, 8]}, 1, 2)
    assert cost.per_voxel > 0 and cost.overhead >= 0
    assert [v for v, _ in cost.points] == [2 * 16**3, 2 * 32**3, 2 * 64 * 64 * 32]  # tiny, the two probe sizes
    assert cost.seconds(2, (48, 48, 32)) >= cost.seconds(2, (32, 32, 32))
    assert cost.seconds(2, (96, 96, 64)) > cost.seconds(2, (64, 64, 32))  # beyond the points: the line
    assert cost.max_voxels(2, cost.seconds(2, (32, 32, 32))) >= 32**3 * (1 - 1e-6)


def test_one_step_of_a_given_size_is_timed():
    seconds = device.measure_step("unet3d", 3, {"features": [4, 8]}, 1, 2, 2, (32, 32, 16))
    assert 0 < seconds < 10


# a price curve shaped like a probe's: a tiny step, then one eight and one sixty-four times larger
CURVE = StepCost(0.04, 0.66e-6, ((4096.0, 0.04), (32768.0, 0.22), (262144.0, 0.35)))


def test_a_step_is_priced_between_the_timed_steps_and_on_the_line_beyond():
    assert CURVE.at(32768) == pytest.approx(0.22)
    assert CURVE.at((32768 + 262144) / 2) == pytest.approx((0.22 + 0.35) / 2)
    line = lambda v: 0.04 + 0.66e-6 * v  # noqa: E731
    # beyond the points: the line scaled through the nearest one
    assert CURVE.at(362144) == pytest.approx(0.35 * line(362144) / line(262144))
    assert CURVE.at(1000) == pytest.approx(0.04 * line(1000) / line(4096))
    sizes = [1000 * 1.3**i for i in range(30)]
    times = [CURVE.at(v) for v in sizes]
    assert times == sorted(times)
    for v in sizes[6:]:  # the inverse: the most voxels a step may see in a time
        assert CURVE.voxels_within(CURVE.at(v)) == pytest.approx(v, rel=1e-9)
    assert CURVE.max_voxels(2, 0.35) == pytest.approx(131072)


def test_a_noisy_point_never_makes_a_larger_step_cheaper():
    noisy = StepCost(0.04, 1e-6, ((32768.0, 0.30), (65536.0, 0.25), (262144.0, 0.40)))
    assert noisy.curve() == [(32768.0, 0.30), (65536.0, 0.30), (262144.0, 0.40)]
    assert noisy.at(50000) == pytest.approx(0.30)


def test_a_timed_step_replaces_the_points_near_it():
    cost = CURVE.with_point(300000, 0.42)
    assert cost.points == ((4096.0, 0.04), (32768.0, 0.22), (300000.0, 0.42))  # 262144 is within a quarter
    assert cost.with_point(600000, 0.8).at(600000) == pytest.approx(0.8)
    assert CURVE.scaled(2).at(32768) == pytest.approx(0.44)


def test_points_are_cached_and_bad_ones_discard_the_file(tmp_path, fake_probe, caplog):
    profile = device_profile(cache_dir=tmp_path)
    key = device.network_key("unet3d", 3, {})
    profile.networks[key] = CURVE
    device.save_profile(profile, profile.path)
    assert device_profile(cache_dir=tmp_path).networks[key] == CURVE
    data = json.loads(profile.path.read_text())
    data["networks"][key]["points"] = [[32768, -1.0]]
    profile.path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="medzoo.planning.device"):
        assert device_profile(cache_dir=tmp_path).networks == {}
    assert "discarding the cached step-time probe" in caplog.text


def test_confirming_a_plan_times_its_step_and_keeps_it(tmp_path, fake_probe, monkeypatch):
    monkeypatch.setattr(device, "measure_step", lambda *a, **k: 0.5)
    profile = device_profile(cache_dir=tmp_path)
    assert profile.confirm("unet3d", 3, {}, 1, 2, 2, (64, 64, 32)) == 0.5
    cost = device_profile(cache_dir=tmp_path).cost("unet3d", 3, {}, 1, 2)
    assert cost.seconds(2, (64, 64, 32)) == pytest.approx(0.5)


def test_a_2d_network_with_four_poolings_is_probed():
    # its tiny step is 32 x 32: at 16 x 16 the coarsest level would be one pixel, which instance norm rejects
    cost = measure_step_cost("unet2d", 2, {"features": [4, 8, 16, 32, 64]}, 1, 2)
    assert cost.per_voxel > 0 and cost.overhead >= 0


@pytest.fixture
def fake_probe(monkeypatch):
    calls = []

    def measure(model, spatial_dims, model_kwargs, in_channels, num_classes, device="cpu", max_seconds=10.0):
        calls.append(model)
        return StepCost(0.01, 1e-6)

    monkeypatch.setattr(device, "measure_step_cost", measure)
    return calls


def test_profile_is_measured_once_then_read_from_the_cache(tmp_path, fake_probe):
    profile = device_profile(cache_dir=tmp_path)
    assert profile.cost("unet3d", 3, {}, 1, 2) == StepCost(0.01, 1e-6)
    files = list(tmp_path.glob("device-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["signature"] == profile.signature
    again = device_profile(cache_dir=tmp_path)
    assert again.cost("unet3d", 3, {}, 1, 2) == StepCost(0.01, 1e-6)
    assert fake_probe == ["unet3d"]  # measured once


@pytest.mark.parametrize("content", [
    "{not json",
    json.dumps({"version": 999}),
    "SIGNATURE_OF_ANOTHER_MACHINE",
    "NEGATIVE_COST",
])
def test_a_bad_cache_file_is_discarded_with_one_warning(tmp_path, fake_probe, caplog, content):
    profile = device_profile(cache_dir=tmp_path)
    profile.cost("unet3d", 3, {}, 1, 2)
    path = profile.path
    data = json.loads(path.read_text())
    if content == "SIGNATURE_OF_ANOTHER_MACHINE":
        data["signature"] = {**data["signature"], "cpu": "another CPU"}
        content = json.dumps(data)
    elif content == "NEGATIVE_COST":
        key = next(iter(data["networks"]))
        data["networks"][key]["per_voxel"] = -1.0
        content = json.dumps(data)
    path.write_text(content)
    with caplog.at_level(logging.WARNING, logger="medzoo.planning.device"):
        fresh = device_profile(cache_dir=tmp_path)
    assert len([r for r in caplog.records if "discarding the cached step-time probe" in r.getMessage()]) == 1
    assert fresh.networks == {}
    assert fresh.cost("unet3d", 3, {}, 1, 2) == StepCost(0.01, 1e-6)  # measured again and rewritten
    assert json.loads(path.read_text())["networks"]


def test_profile_costs_the_network_it_is_asked_about():
    profile = DeviceProfile({"device": "cpu"}, {})
    cost = profile.cost("unet3d", 3, {"features": [4, 8]}, 1, 2)
    assert len(profile.networks) == 1 and cost.per_voxel > 0


def test_probe_prices_steps_in_the_training_precision(monkeypatch):
    import torch

    from medzoo import runtime

    monkeypatch.setattr(runtime, "autocast_dtype", lambda *a, **k: torch.bfloat16)
    assert device.machine_signature("cpu")["precision"] == "bfloat16"  # a bf16 machine caches apart
    cost = measure_step_cost("unet3d", 3, {"features": [4, 8]}, 1, 2)
    assert cost.per_voxel > 0


def _cached_profile(tmp_path, cost=StepCost(0.1, 1e-6)):
    profile = device_profile(cache_dir=tmp_path)
    key = device.network_key("unet3d", 3, {})
    profile.networks[key] = cost
    device.save_profile(profile, profile.path)
    return key


def test_a_mispriced_step_moves_the_cached_price_half_way(tmp_path):
    key = _cached_profile(tmp_path)
    # training measured 4x the price: the cached line is scaled by sqrt(4) = 2, once per run
    assert device.correct_step_price(key, expected=0.5, measured=2.0, cache_dir=tmp_path) == pytest.approx(2.0)
    assert device_profile(cache_dir=tmp_path).networks[key] == StepCost(0.2, 2e-6)
    assert device.correct_step_price(key, expected=2.0, measured=0.5, cache_dir=tmp_path) == pytest.approx(0.5)
    assert device_profile(cache_dir=tmp_path).networks[key] == StepCost(0.1, 1e-6)


@pytest.mark.parametrize("expected, measured", [(1.0, 1.2), (1.0, 0.7), (0.0, 1.0), (1.0, float("nan"))])
def test_a_step_priced_about_right_leaves_the_cache_alone(tmp_path, expected, measured):
    key = _cached_profile(tmp_path)
    assert device.correct_step_price(key, expected, measured, cache_dir=tmp_path) is None
    assert device_profile(cache_dir=tmp_path).networks[key] == StepCost(0.1, 1e-6)


def test_an_unprobed_network_is_not_corrected(tmp_path):
    _cached_profile(tmp_path)
    assert device.correct_step_price("unet3d/3d/{\"features\": [1]}", 1.0, 5.0, cache_dir=tmp_path) is None


def test_the_probe_tunes_malloc_as_training_does(monkeypatch):
    # training reuses freed activations (runtime.tune_malloc) before its first step; a probe without it
    # would time page faults that training never pays
    from medzoo import runtime

    class Tuned(Exception):
        pass

    def tune(enable=None):
        raise Tuned

    monkeypatch.setattr(runtime, "tune_malloc", tune)
    with pytest.raises(Tuned):
        measure_step_cost("unet3d", 3, {"features": [4, 8]}, 1, 2)
