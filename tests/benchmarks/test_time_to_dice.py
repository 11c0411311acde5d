"""The held-out scoring of ``benchmarks.time_to_dice``: classes and nested regions."""

from __future__ import annotations

import numpy as np
import pytest
from benchmarks.time_to_dice import BRATS_REGIONS, group_dice


def test_a_region_prediction_is_scored_on_the_values_each_region_unites():
    ref = np.array([0, 2, 2, 1, 3, 4, 4, 0])          # oedema 2, necrosis 1, non-enhancing 3, enhancing 4
    pred = np.array([0, 2, 2, 1, 1, 4, 0, 2])         # a region run paints WT -> 2, TC -> 1, ET -> 4
    wt, tc, et = BRATS_REGIONS["regions"].values()
    scores = group_dice(pred, ref, [wt, tc, et])
    # WT: pred {1,2,3,4,5,7} vs ref {1..6}: 2*5/(6+6); TC: pred {3,4,5} vs ref {3,4,5,6}: 2*3/7; ET: {5} vs {5,6}
    assert scores == pytest.approx([10 / 12, 6 / 7, 2 / 3])
    assert group_dice(pred, ref, [[3]]) == [0.0]     # a region run never paints class 3 on its own
    assert group_dice(np.zeros(4), np.zeros(4), [[1]]) == [1.0]


def test_set_passes_config_fields_and_plan_settings(tmp_path, monkeypatch):
    from benchmarks import time_to_dice
    from medzoo.engine import trainer

    seen = []

    def fake_train(config):
        seen.append(config)
        raise RuntimeError("stop here")

    monkeypatch.setattr(trainer, "train", fake_train)
    (tmp_path / "data").mkdir()
    out = time_to_dice.main(["--dataset", str(tmp_path / "data"), "--budget", "1m", "--runs-dir", str(tmp_path / "runs"),
                             "--out", str(tmp_path / "res"), "--set", "patch_size=[56,56,48]", "--set", "batch_size=2",
                             "--set", "mirror_axes=[0,1,2]"])
    (config,) = seen
    assert list(config.patch_size) == [56, 56, 48] and config.batch_size == 2
    assert config.plan_overrides == {"mirror_axes": [0, 1, 2]}
    assert out["rows"][0]["skipped"].startswith("RuntimeError: stop here")
