"""``medzoo predict`` and ``medzoo train`` as a user runs them, under faults: processes sharing a run folder,
a read-only run folder, a full disk, ``kill -9``, damaged caches, an output folder that is the input. Each
asserts what the user needs: correct outputs, or one-line errors and a non-zero exit, never a traceback,
never a partial or clobbered file. Child processes, so all slow."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from medzoo.engine.checkpoint import load_checkpoint
from medzoo.inference.backends import CACHE_DIR
from medzoo.io.readers import read_volume, write_volume
from support.inference import THRESHOLD, blob_image, make_run, register_threshold
from support.reliability import damage, error_lines, medzoo_command, visible_files

pytestmark = pytest.mark.slow
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture
def scans(tmp_path):
    """Three scans in ``in/`` and the labels the threshold network must give them."""
    truth = {}
    for i in range(3):
        image = blob_image(shape=(17 + i, 13, 9), seed=i)
        write_volume(image, tmp_path / "in" / f"scan{i}.nii.gz")
        truth[f"scan{i}.nii.gz"] = image
    return tmp_path / "in", truth


@pytest.fixture
def run(tmp_path, monkeypatch):
    register_threshold(monkeypatch)
    run_dir, _ = make_run(tmp_path / "run", THRESHOLD, 1, 2, patch_size=(8, 8, 8), normalization=["none"])
    return run_dir


def _predict(run, inputs, out, *extra, umask=None, **kwargs) -> subprocess.Popen:
    preexec = None if umask is None else (lambda: os.umask(umask))
    return subprocess.Popen(medzoo_command("-q", "predict", "--model", run, "--input", inputs, "--output", out,
                                           "--device", "cpu", "--no-progress", *extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec,
                            **kwargs)  # fmt: skip


def _finish(proc, timeout=300) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def _assert_labels(out: Path, truth: dict, names=None) -> None:
    for name in names or truth:
        got = read_volume(out / name)
        image = truth[name]
        np.testing.assert_array_equal(got.array[0], (image.array[0] > 0).astype(np.uint8), err_msg=name)
        np.testing.assert_allclose(got.affine, image.affine, atol=1e-5)


def test_concurrent_first_predictions_share_one_export_and_agree(run, scans, tmp_path):
    inputs, truth = scans
    procs = [_predict(run, inputs, tmp_path / f"out{i}", umask=0o002) for i in range(3)]
    for proc in procs:
        code, err = _finish(proc)
        assert code == 0 and not error_lines(err, "predict"), err[-2000:]
    for i in range(3):
        out = tmp_path / f"out{i}"
        assert sorted(p.name for p in out.iterdir()) == sorted(truth)  # no temporary file left either
        _assert_labels(out, truth)
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o664 for p in out.iterdir())  # shareable under umask 002
    cache = run / CACHE_DIR
    assert len(list(cache.glob("*.onnx"))) == 1 and not list(cache.glob(".export-*"))
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o664 for p in cache.iterdir() if p.is_file())


@contextmanager
def _read_only(folder: Path):
    """``folder`` read-only, also for root: a read-only bind mount where root may mount, else no write bits."""
    if IS_ROOT and shutil.which("mount"):
        subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
        try:
            subprocess.run(["mount", "-o", "remount,bind,ro", str(folder), str(folder)], check=True)
            yield
        finally:
            subprocess.run(["umount", "-l", str(folder)], check=True)
        return
    modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
    for p in modes:
        p.chmod(modes[p] & ~0o222)
    try:
        yield
    finally:
        for p, mode in modes.items():
            p.chmod(mode)


def test_a_read_only_run_folder_still_predicts(run, scans, tmp_path):
    inputs, truth = scans
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    try:
        cm = _read_only(run)
        cm.__enter__()
    except subprocess.CalledProcessError:
        pytest.skip("this machine cannot make a read-only bind mount")
    try:
        with pytest.raises(OSError):
            (run / "probe").write_text("x")
        code, err = _finish(_predict(run, inputs, tmp_path / "out"))
    finally:
        cm.__exit__(None, None, None)
    assert code == 0 and not error_lines(err, "predict"), err[-2000:]
    _assert_labels(tmp_path / "out", truth)
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # nothing written into it


@contextmanager
def _full_disk(folder: Path):
    """A tiny tmpfs mounted on ``folder`` and filled up by a ballast file (root only)."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], check=True)
    try:
        ballast = folder / ".ballast"
        _fill(ballast)
        yield ballast
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.mark.skipif(not IS_ROOT, reason="mounts a tmpfs (test_training_faults fakes the full disk instead)")
def test_a_full_disk_fails_each_case_on_one_line_and_leaves_no_partial_file(run, scans, tmp_path):
    inputs, truth = scans
    out = tmp_path / "out"
    with _full_disk(out):
        code, err = _finish(_predict(run, inputs, out))
        left = sorted(p.name for p in out.iterdir())
    assert code != 0
    lines = error_lines(err, "predict")
    assert len(lines) == len(truth) and all("No space left" in line for line in lines), err[-2000:]
    assert left == [".ballast"]


def test_kill_9_mid_prediction_leaves_only_whole_label_maps_and_a_rerun_finishes(run, tmp_path):
    truth = {}
    for i in range(8):
        image = blob_image(shape=(40, 36, 24), seed=i)
        write_volume(image, tmp_path / "in" / f"scan{i}.nii.gz")
        truth[f"scan{i}.nii.gz"] = image
    out = tmp_path / "out"
    proc = _predict(run, tmp_path / "in", out, "--backend", "torch")
    deadline = time.monotonic() + 240
    while not (out.is_dir() and visible_files(out)):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    written = visible_files(out)
    assert 0 < len(written) < len(truth), "the prediction was not interrupted"
    _assert_labels(out, truth, written)  # each one whole and right
    code, err = _finish(_predict(run, tmp_path / "in", out, "--backend", "torch"))
    assert code == 0 and not error_lines(err, "predict"), err[-2000:]
    assert visible_files(out) == sorted(truth)
    _assert_labels(out, truth)


@pytest.mark.parametrize("how", ["truncate", "garbage"])
def test_a_damaged_export_cache_is_rebuilt_and_the_prediction_goes_on(run, scans, tmp_path, how):
    inputs, truth = scans
    code, err = _finish(_predict(run, inputs, tmp_path / "first"))
    assert code == 0, err[-2000:]
    derived = sorted(p for p in (run / CACHE_DIR).iterdir() if p.is_file())
    for path in derived:
        damage(path, how)
    code, err = _finish(_predict(run, inputs, tmp_path / "out"))
    assert code == 0 and not error_lines(err, "predict"), err[-2000:]
    _assert_labels(tmp_path / "out", truth)
    assert sorted(p for p in (run / CACHE_DIR).iterdir() if p.is_file()) == derived


def test_output_equal_to_input_is_refused_and_the_inputs_are_untouched(run, scans):
    inputs, _ = scans
    before = {p.name: p.read_bytes() for p in inputs.iterdir()}
    code, err = _finish(_predict(run, inputs, inputs))
    assert code != 0 and len(error_lines(err, "predict")) == 1, err[-2000:]
    assert {p.name: p.read_bytes() for p in inputs.iterdir()} == before


# --- training -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from medzoo.data.phantom import make_phantom_dataset

    return make_phantom_dataset(tmp_path_factory.mktemp("phantom"), cases=3, seed=0, shape=(20, 20, 16))


def _train(data, out, *extra, pause=0.0) -> subprocess.Popen:
    args = ["-q", "train", "--data", data, "--out", out, "--model", "unet3d", "--model-arg", "features=[4, 8]",
            "--epochs", "3", "--iterations", "2", "--batch-size", "2", "--patch-size", "16", "16", "16",
            "--device", "cpu", "--num-workers", "0", "--no-progress", *extra]  # fmt: skip
    env = {**os.environ, "MEDZOO_TEST_STEP_PAUSE": str(pause)}
    return subprocess.Popen(medzoo_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_a_second_training_on_the_same_out_is_refused_and_kill_9_then_resume_finishes(phantom, tmp_path):
    run = tmp_path / "run"
    first = _train(phantom, run, pause=4.0)
    _wait_for(run / "checkpoint_last.pt", first)
    for extra in ([], ["--resume", str(run)]):
        code, err = _finish(_train(phantom, run, *extra))
        lines = error_lines(err, "train")
        assert code == 1 and len(lines) == 1 and "another medzoo process is training" in lines[0], err[-2000:]
    assert first.poll() is None  # the first run went on
    first.send_signal(signal.SIGKILL)
    first.communicate()
    epoch = load_checkpoint(run / "checkpoint_last.pt")["epoch"]
    assert epoch < 3
    code, err = _finish(_train(phantom, run, "--resume", str(run)))  # the killed process left no stuck lock
    assert code == 0 and not error_lines(err, "train"), err[-2000:]
    assert load_checkpoint(run / "checkpoint_last.pt")["epoch"] == 3


@pytest.mark.skipif(not IS_ROOT, reason="mounts a tmpfs (test_training_faults fakes the full disk instead)")
def test_training_that_fills_the_disk_keeps_its_last_checkpoint_and_resumes(phantom, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(run)], check=True)
    proc = None
    try:
        proc = _train(phantom, run, "--cache-dir", tmp_path / "cache", pause=4.0)
        _wait_for(run / "checkpoint_last.pt", proc)
        time.sleep(0.2)
        ballast = run / ".ballast"
        _fill(ballast)  # the disk fills while the first epoch's checkpoint is on it
        code, err = _finish(proc)
        lines = error_lines(err, "train")
        assert code == 1 and len(lines) == 1, err[-2000:]
        assert "No space left" in lines[0] or "free on that disk" in lines[0], lines[0]
        assert load_checkpoint(run / "checkpoint_last.pt")["epoch"] >= 1  # whole
        ballast.unlink()
        code, err = _finish(_train(phantom, run, "--resume", run))
        assert code == 0 and not error_lines(err, "train"), err[-2000:]
        assert load_checkpoint(run / "checkpoint_last.pt")["epoch"] == 3
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run(["umount", "-l", str(run)], check=True)


def _fill(ballast: Path) -> None:
    """Write ``ballast`` until its disk is full."""
    with open(ballast, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
