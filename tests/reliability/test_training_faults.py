"""Training under faults: a full disk while a checkpoint is written keeps the previous one and the run
resumes; a run folder that another process trains in is refused with one line; the preprocessing cache
heals."""

from __future__ import annotations

import errno
import logging
import subprocess
import sys

import numpy as np
import pytest

from medzoo.cli import main
from medzoo.data.cache import build_cache
from medzoo.engine import checkpoint as checkpoint_module
from medzoo.engine.checkpoint import load_checkpoint
from medzoo.engine.config import TrainConfig
from medzoo.engine.runlock import LOCK_NAME, hold_run_lock, release_run_lock
from medzoo.engine.trainer import train
from medzoo.errors import CheckpointError, ConfigError
from support.cache import PLAN, make_dataset
from support.reliability import damage, warnings_about

SHAPE = (20, 20, 16)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from medzoo.data.phantom import make_phantom_dataset

    return make_phantom_dataset(tmp_path_factory.mktemp("phantom"), cases=3, seed=0, shape=SHAPE)


def _config(data, out, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), model="unet3d", model_kwargs={"features": [4, 8]}, epochs=2,
                iterations_per_epoch=1, batch_size=2, patch_size=(16, 16, 16), progress=False, device="cpu",
                num_workers=0, log_images=False, val_every=1, deterministic=True, seed=3, final_tta=False,
                max_val_cases=1)  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def test_a_full_disk_at_a_checkpoint_keeps_the_previous_one_and_the_run_resumes(phantom, tmp_path, monkeypatch):
    run = tmp_path / "run"
    real_save = checkpoint_module.torch.save
    saves = []

    def disk_fills_in_epoch_two(obj, f, *args, **kwargs):
        saves.append(obj.get("epoch"))
        if obj.get("epoch") == 2:
            with open(f, "wb") as out:
                out.write(b"\0" * 100)  # part of the file made it to disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", disk_fills_in_epoch_two)
    with pytest.raises(CheckpointError, match="No space left on device") as err:
        train(_config(phantom, run))
    message = str(err.value)
    assert "\n" not in message and "checkpoint_" in message and "--resume" in message
    assert load_checkpoint(run / "checkpoint_last.pt")["epoch"] == 1  # the previous one, whole
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".checkpoint")) == []  # no temp left
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    train(TrainConfig.load(run / "config.json"), resume=True)
    assert load_checkpoint(run / "checkpoint_last.pt")["epoch"] == 2


@pytest.mark.slow
def test_the_cli_says_one_line_when_the_disk_fills(phantom, tmp_path, monkeypatch, capsys):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", no_space)
    args = ["train", "--data", str(phantom), "--out", str(tmp_path / "run"), "--model", "unet3d",
            "--model-arg", "features=[4, 8]", "--epochs", "1", "--iterations", "1", "--batch-size", "2",
            "--patch-size", "16", "16", "16", "--device", "cpu", "--num-workers", "0", "--no-progress"]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("medzoo train: error:") and "No space left" in err[0]


HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, str(os.getpid()).encode())
print("held", flush=True)
time.sleep(120)
"""


def test_a_run_folder_another_process_trains_in_is_refused_until_it_ends(phantom, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run / LOCK_NAME)], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=f"another medzoo process is training in this folder \\(process "
                                              f"{holder.pid}\\)") as err:  # fmt: skip
            train(_config(phantom, run, epochs=1))
        assert "\n" not in str(err.value)
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # nothing of the refused run was written
    finally:
        holder.kill()  # as by kill -9: the kernel drops its lock
        holder.wait()
    hold_run_lock(run)  # free again
    release_run_lock(run)


@pytest.mark.parametrize("how", ["truncate", "garbage"])
def test_every_file_of_the_preprocessing_cache_heals(tmp_path, caplog, how):
    info = make_dataset(tmp_path / "data", n=2)
    cache = tmp_path / "cache"
    first = {c.case_id: (np.array(c.image), np.array(c.label), c.class_locations) for c in build_cache(
        info, PLAN, cache, progress=False)}  # fmt: skip
    files = sorted(p for p in cache.iterdir() if p.name.startswith("case_0"))
    assert {p.suffix for p in files} == {".npy", ".npz", ".json"}
    for path in files:
        damage(path, how)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            again = build_cache(info, PLAN, cache, progress=False)
        assert len(warnings_about(caplog, path.name)) == 1 and len(caplog.records) == 1, caplog.text
        for case in again:
            image, label, locations = first[case.case_id]
            np.testing.assert_array_equal(case.image, image)
            np.testing.assert_array_equal(case.label, label)
            assert locations.keys() == case.class_locations.keys()
            for k in locations:
                np.testing.assert_array_equal(case.class_locations[k], locations[k])
