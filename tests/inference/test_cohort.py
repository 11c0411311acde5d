"""Cohorts under torchrun: each rank's share of the cases, every case exactly once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medzoo.engine.distributed import DistInfo
from medzoo.inference import cohort as cohort_module
from medzoo.inference.cohort import gather_to_main, merge_reports, rank_share
from medzoo.inference.inputs import collect_cases
from medzoo.inference.pipeline import PredictionReport
from medzoo.inference.predictor import predict
from medzoo.io.readers import write_volume
from support.inference import blob_image, make_run


def test_rank_shares_cover_every_case_exactly_once_and_are_deterministic():
    cases = [f"case{i:02d}" for i in range(11)]
    for world in (1, 2, 3, 4, 16):
        shares = [rank_share(cases, DistInfo(rank=r, world_size=world)) for r in range(world)]
        assert sorted(c for share in shares for c in share) == cases
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
        assert shares == [rank_share(cases, DistInfo(rank=r, world_size=world)) for r in range(world)]
    assert rank_share(cases[:2], DistInfo(rank=3, world_size=4)) == []  # more ranks than cases


def test_without_a_process_group_gather_returns_the_local_object():
    assert gather_to_main({"written": 3}) == [{"written": 3}]


def test_merged_reports_list_every_rank_and_take_the_slowest_time():
    ranks = [PredictionReport(written=[Path("c2"), Path("c0")], skipped=[Path("c4")], seconds=5.0),
             PredictionReport(written=[Path("c1")], failed=[("c3", "bad file")], seconds=7.5)]
    merged = merge_reports(ranks)
    assert merged.written == [Path("c0"), Path("c1"), Path("c2")] and merged.skipped == [Path("c4")]
    assert merged.failed == [("c3", "bad file")] and merged.seconds == 7.5


# ----------------------------------------------------------------------------------- predict under torchrun
UNET = {"model_kwargs": {"features": [4, 8]}, "patch_size": (16, 16, 16), "normalization": ["zscore"]}
CASES = ["c0", "c1", "c2", "c3", "c4"]


@pytest.fixture
def cohort(tmp_path):
    run_dir, _ = make_run(tmp_path / "run", "unet3d", 1, 2, **UNET)
    scans = tmp_path / "scans"
    scans.mkdir()
    for i, name in enumerate(CASES):
        write_volume(blob_image((18, 17, 12), seed=i), scans / f"{name}.nii.gz")
    return run_dir, scans


def _as_rank(monkeypatch, rank: int, world: int) -> None:
    """Run as ``rank`` of ``world`` in this process: the environment torchrun sets, no real process group."""
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setattr(cohort_module.dist, "init_process_group", lambda **kw: None)
    monkeypatch.setattr(cohort_module.dist, "destroy_process_group", lambda: None)


def test_each_rank_predicts_its_share_and_skip_existing_resumes(cohort, tmp_path, monkeypatch, fp32_on_cpu):
    run_dir, scans = cohort
    out = tmp_path / "out"
    options = {"backend": "torch", "amp": "none", "progress": False, "device": "cpu"}
    written = []
    for rank in (0, 1):
        _as_rank(monkeypatch, rank, 2)
        report = predict(run_dir, scans, out, **options)
        written.append(sorted(p.name for p in report.written))
    assert written == [["c0.nii.gz", "c2.nii.gz", "c4.nii.gz"], ["c1.nii.gz", "c3.nii.gz"]]
    for name in ("c2.nii.gz", "c3.nii.gz"):  # a killed job: two outputs missing
        (out / name).unlink()
    kept = (out / "c0.nii.gz").stat().st_mtime_ns
    again = []
    for rank in (0, 1):
        _as_rank(monkeypatch, rank, 2)
        report = predict(run_dir, scans, out, skip_existing=True, **options)
        again.append(([p.name for p in report.written], sorted(p.name for p in report.skipped)))
    assert again == [(["c2.nii.gz"], ["c0.nii.gz", "c4.nii.gz"]), (["c3.nii.gz"], ["c1.nii.gz"])]
    assert (out / "c0.nii.gz").stat().st_mtime_ns == kept


def test_a_rerun_removes_what_a_killed_prediction_left_and_never_counts_it(cohort, tmp_path, caplog,
                                                                           fp32_on_cpu):
    run_dir, scans = cohort
    out = tmp_path / "out"
    options = {"backend": "torch", "amp": "none", "progress": False, "device": "cpu"}
    predict(run_dir, scans, out, **options)
    (out / "c2.nii.gz").unlink()
    temp = out / ".c2.k2x_9qa7.nii.gz"  # what kill -9 during c2's atomic write leaves, as utils names it
    temp.write_bytes(b"half a label map")
    (out / "notes.txt").write_text("not ours")
    old = time.time() - 60
    os.utime(temp, (old, old))
    todo, kept = cohort_module.split_existing([c for c in collect_cases(scans) if c.name == "c2"], out, True)
    assert [c.name for c in todo] == ["c2"] and kept == []  # a temporary file is no finished output
    with caplog.at_level("INFO", logger="medzoo.inference.cohort"):
        report = predict(run_dir, scans, out, skip_existing=True, **options)
    assert [p.name for p in report.written] == ["c2.nii.gz"] and len(report.skipped) == 4
    lines = [r.getMessage() for r in caplog.records if "temporary file" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("removed 1 temporary file"), lines
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{c}.nii.gz" for c in CASES] + ["notes.txt"])


@pytest.mark.slow
def test_torchrun_two_gloo_processes_predict_every_case_exactly_once(cohort, tmp_path):
    run_dir, scans = cohort
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone", "-m", "medzoo",
               "-v", "predict", "--model", str(run_dir), "--input", str(scans), "--output", str(out),
               "--backend", "torch", "--amp", "none", "--device", "cpu", "--no-progress"]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shares = [line.split(": ", 1)[1].split(", ") for line in proc.stderr.splitlines()
              if line.startswith("rank ") and " predicts: " in line]
    assert len(shares) == 2
    assert sorted(c for share in shares for c in share) == CASES  # every case by exactly one rank
    assert sorted(p.name for p in out.iterdir()) == [f"{c}.nii.gz" for c in CASES]
    summaries = [line for line in proc.stdout.splitlines() if line.startswith("wrote ")]
    assert len(summaries) == 1 and summaries[0].startswith("wrote 5/5 label map(s)")
