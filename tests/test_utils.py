"""medzoo.utils: the temporary files of atomic writes are recognised by name, and only stale ones removed."""

from __future__ import annotations

import os
import time

import pytest

from medzoo.utils import atomic_write, is_atomic_temp, remove_stale_temp_files


@pytest.mark.parametrize("name", ["scan0.nii.gz", "case.1.nii.gz", "metrics.csv", "noext", ".hidden.json"])
def test_the_temporary_files_of_atomic_writes_are_recognised(tmp_path, name):
    seen = []
    atomic_write(tmp_path / name, lambda tmp: (seen.append(tmp.name), tmp.write_bytes(b"x")))
    assert is_atomic_temp(seen[0]), seen
    assert not is_atomic_temp(name)


@pytest.mark.parametrize("name", [".DS_Store", ".c2.notes.txt", "c2.k2x_9qa7.nii.gz", ".c2.K2X-9QA7.nii.gz",
                                  ".c2.k2x_9qa7"])
def test_other_names_are_not_temporary_files(name):
    assert not is_atomic_temp(name)


def test_only_temporary_files_older_than_the_run_are_removed(tmp_path):
    stale, fresh = tmp_path / ".c2.k2x_9qa7.nii.gz", tmp_path / ".c3.abcdefgh.nii.gz"
    kept = [tmp_path / "c1.nii.gz", tmp_path / ".DS_Store", fresh]
    for path in [stale, *kept]:
        path.write_bytes(b"x")
    (tmp_path / ".c4.abcdefgh.d").mkdir()  # a folder of that name is not one of our files
    started = time.time()
    old = started - 60
    os.utime(stale, (old, old))
    for path in kept[:2]:
        os.utime(path, (old, old))
    os.utime(fresh, (started + 1, started + 1))  # a write still going on
    assert remove_stale_temp_files(tmp_path, started) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".c4.abcdefgh.d", *(p.name for p in kept)])
    assert remove_stale_temp_files(tmp_path / "missing", started) == []
