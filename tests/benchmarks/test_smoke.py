"""Benchmarks: the shared helpers, the runner, and (slow) each module's entry point with --quick."""

from __future__ import annotations

import json

import pytest

from benchmarks import common


def test_interleaved_and_summaries() -> None:
    calls: list[str] = []
    times = common.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, reps=3, warmup=1)
    assert set(times) == {"a", "b"} and all(len(v) == 3 for v in times.values())
    assert calls[:2] == ["a", "b"] and calls[4:6] == ["b", "a"]  # warm-up, then rotating order
    assert common.median([3.0, 1.0, 2.0]) == 2.0
    assert common.ratio(2.0, 1.0) == 2.0
    assert common.summarize([1.0, 3.0])["n"] == 2


def test_tables_and_results(tmp_path) -> None:
    rows = [{"name": "x", "t": 1.5}, {"name": "y", "t": float("nan"), "extra": 2}]
    text = common.format_table(rows)
    assert "extra" in text.splitlines()[0] and "-" in text.splitlines()[-1]
    md = common.markdown_table(rows)
    assert md.startswith("| name | t | extra |")
    path = common.write_results("demo", {"rows": rows}, tmp_path)
    assert json.loads(path.read_text())["rows"][1]["t"] is None


def test_peak_rss_subprocess_sees_a_big_allocation() -> None:
    small = common.peak_rss_mb_subprocess("x = 1")
    big = common.peak_rss_mb_subprocess("x = bytearray(200 * 1024 * 1024)")
    assert big - small > 150


def test_runner_reports_missing_module(tmp_path) -> None:
    from benchmarks.__main__ import main

    res = main(["--only", "does_not_exist", "--out", str(tmp_path)])
    assert "skipped" in res["does_not_exist"]
    assert "does_not_exist" in (tmp_path / "summary.md").read_text()


def test_profile_groups() -> None:
    from benchmarks.profile import group_of

    assert group_of("aten::mkldnn_convolution") == "convolution"
    assert group_of("aten::native_batch_norm_backward") == "normalisation"
    assert group_of("aten::leaky_relu_") == "activation"
    assert group_of("aten::cat") == "copies"
    assert group_of("aten::_foreach_add_") == "optimizer"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["training_step", "models", "profile", "time_to_dice", "layouts", "backends"])
def test_module_quick(name: str, tmp_path) -> None:
    import importlib

    module = importlib.import_module(f"benchmarks.{name}")
    res = module.main(["--quick", "--reps", "1", "--warmup", "0", "--threads", "1", "--out", str(tmp_path)])
    assert res["benchmark"] == name
    assert (tmp_path / f"{name}.json").is_file()
    if "skipped" not in res:
        assert res["rows"] and all("skipped" not in r for r in res["rows"])
    if name == "training_step":  # the as-shipped comparison ran each side in its own process
        assert all(r["shipped_medzoo_s"] > 0 and r["shipped_conv_peak_gflops"] > 0 for r in res["rows"])


def test_backends_benchmark_times_every_backend(tmp_path) -> None:
    from benchmarks.backends import RUNTIMES, main

    res = main(["--quick", "--reps", "2", "--warmup", "0", "--out", str(tmp_path)])
    (row,) = res["rows"]
    assert row["torch_layout"] == "channels_last"  # unet3d's card: channels-last on the CPU
    for name in RUNTIMES:  # a runtime that fails is reported in the row, so here none may be skipped
        assert row[f"{name}_s"] > 0 and f"{name}_skipped" not in row
    assert row["speedup_min"] <= row["speedup"] <= row["speedup_max"]
    assert row["equal_labels"] > 0.99 and row["max_prob_diff"] < 0.01
    assert (tmp_path / "backends.json").is_file()


def test_kernels_benchmark_times_both_sides_of_every_network(tmp_path) -> None:
    from benchmarks import kernels as bench
    from medzoo import runtime

    res = bench.main(["--quick", "--reps", "1", "--warmup", "0", "--threads", "1", "--no-bf16", "--out", str(tmp_path)])
    assert (tmp_path / "kernels.json").is_file()
    if runtime.fused_kernels() is None:
        assert res["skipped"] == "kernel unavailable"
        return
    names = [r["workload"].split()[0] for r in res["rows"]]
    assert names[-3:] == ["unet3d", "segresnet", "resnet3d_vae"] and set(names[:-3]) == {"dynunet"}
    assert all(r["kernel_s"] > 0 and r["pytorch_ops_s"] > 0 and r["speedup"] > 0 for r in res["rows"])
    assert {r["layout"] for r in res["rows"] if r["workload"].startswith(("dynunet", "unet3d"))} == {"channels_last_3d"}
