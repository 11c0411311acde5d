"""The compiled-kernel cache heals: a damaged library or note is discarded with one warning and built again,
and the layers keep working (a truncated library must never reach ``dlopen``, which dies of SIGBUS)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys

import pytest

from medzoo import kernels
from support.reliability import damage, warnings_about

needs_compiler = pytest.mark.skipif(kernels._compiler() is None, reason="no C++ compiler on this machine")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A kernel cache holding this machine's built library (from the usual cache, built there if need be),
    and a stand-in compiler that "builds" by copying that library (a real build takes 2-20 s)."""
    kernel = kernels.load()
    if kernel is None:
        pytest.skip("medzoo's kernels do not build on this machine")
    folder = tmp_path / "kernels"
    folder.mkdir()
    for path in (kernel.path, kernel.path.with_suffix(".checked")):  # same mtime: the check's note still holds
        shutil.copy2(path, folder / path.name)
    real = kernels._compiler()
    fake = tmp_path / "copying-c++"
    fake.write_text(f'#!/bin/sh\n[ "$1" = --version ] && exec "{real}" --version\n'
                    f'while [ $# -gt 1 ]; do [ "$1" = -o ] && exec cp -p "{kernel.path}" "$2"; shift; done\nexit 1\n')
    fake.chmod(0o755)
    monkeypatch.setenv("MEDZOO_KERNEL_CACHE", str(folder))
    monkeypatch.setenv("CXX", str(fake))
    kernels.reset()
    yield folder
    kernels.reset()


@needs_compiler
def test_a_garbage_library_is_discarded_with_one_warning_and_built_again(cache, caplog):
    (library,) = cache.glob("*.so")
    whole = library.read_bytes()
    damage(library, "garbage")
    with caplog.at_level(logging.WARNING, logger="medzoo.kernels"):
        assert kernels.load() is not None
    assert len(warnings_about(caplog, library.name)) == 1 and len(caplog.records) == 1, caplog.text
    assert library.read_bytes() == whole


@needs_compiler
def test_a_damaged_failure_note_is_discarded_and_the_build_tried_again(cache, caplog):
    (library,) = cache.glob("*.so")
    library.unlink()
    note = library.with_suffix(".failed")
    note.write_bytes(b"\x00\xff\xfe")
    with caplog.at_level(logging.WARNING, logger="medzoo.kernels"):
        assert kernels.load() is not None
    assert len(warnings_about(caplog, note.name)) == 1 and not note.exists()


@needs_compiler
@pytest.mark.slow
def test_a_truncated_library_never_reaches_dlopen(cache):
    """In a child process: a truncated library that reached ``dlopen`` would kill it with SIGBUS."""
    (library,) = cache.glob("*.so")
    damage(library, "truncate")
    code = ("import logging, sys; logging.basicConfig(level=logging.WARNING, format='%(message)s')\n"
            "from medzoo import kernels; sys.exit(0 if kernels.load() is not None else 3)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [line for line in done.stderr.splitlines() if library.name in line and "truncated" in line]
    assert kernels._library_problem(library) is None
