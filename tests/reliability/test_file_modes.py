"""Files medzoo writes get the permissions any other tool would give them (``0666 & ~umask``), so a lab can
share predictions and run folders; a file replaced in place keeps its mode."""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager

import pytest

from medzoo.inference.predictor import predict
from medzoo.io.readers import write_volume
from medzoo.utils import atomic_write_bytes, atomic_write_text, current_umask
from support.inference import THRESHOLD, blob_image, make_run, register_threshold


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_atomic_writes_get_0666_minus_the_umask_and_keep_a_replaced_files_mode(tmp_path, mask):
    with umask(mask):
        assert current_umask() == mask
        new = atomic_write_text(tmp_path / "sub" / "a.json", "{}")
        assert mode(new) == 0o666 & ~mask
        os.chmod(new, 0o640)
        atomic_write_bytes(new, b"[]")
        assert mode(new) == 0o640 and new.read_bytes() == b"[]"
    assert sorted(p.name for p in new.parent.iterdir()) == ["a.json"]  # no temporary file left


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_predictions_and_run_files_are_shareable(tmp_path, monkeypatch, mask):
    register_threshold(monkeypatch)
    with umask(mask):
        run, _ = make_run(tmp_path / "run", THRESHOLD, 1, 2, patch_size=(8, 8, 8), normalization=["none"])
        write_volume(blob_image(), tmp_path / "in" / "scan.nii.gz")
        report = predict(run, tmp_path / "in", tmp_path / "out", progress=False, device="cpu", backend="torch")
    assert report.ok
    for path in (tmp_path / "out" / "scan.nii.gz", tmp_path / "in" / "scan.nii.gz", run / "plan.json",
                 run / "checkpoint_best.pt"):  # fmt: skip
        assert mode(path) == 0o666 & ~mask, path
