"""The compiled-kernel cache heals: a damaged library or note is discarded with one warning and built again,
and the layers keep working (a truncated library must never reach ``dlopen``, which dies of SIGBUS)."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

import pytest

from medzoo import runtime
from medzoo.accel import kernels
from support.reliability import damage, warnings_about

needs_compiler = pytest.mark.skipif(kernels.compiler(os.environ.get("CXX")) is None,
                                    reason="no C++ compiler on this machine")


def _copying_compiler(path, library) -> str:
    """A stand-in C++ compiler for ``cpp_extension``'s ninja build that "builds" by copying ``library`` to
    every output (and writes the dependency file ninja asks for): a real build takes 2-20 s."""
    real = kernels.compiler(os.environ.get("CXX"))
    path.write_text(f'#!/bin/sh\n[ "$1" = --version ] && exec "{real}" --version\n'
                    'while [ $# -gt 1 ]; do\n'
                    '  [ "$1" = -MF ] && echo "${2%.d}:" > "$2"\n'
                    f'  [ "$1" = -o ] && out="$2"\n  shift\ndone\n'
                    f'[ -n "$out" ] && exec cp "{library}" "$out"\nexit 1\n')
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A kernel cache holding this machine's built and checked library (from the usual cache, built there if
    need be), and a stand-in compiler that "builds" by copying that library."""
    kernel = runtime.fused_kernels()
    if kernel is None:
        pytest.skip("medzoo's kernels do not build on this machine")
    folder = tmp_path / "kernels"
    folder.mkdir()
    good = tmp_path / "good.so"
    shutil.copyfile(kernel.path, good)
    build = folder / kernel.path.parent.name
    build.mkdir()
    for path in (kernel.path, kernel.path.parent / "checked"):  # the check's note vouches for these bytes
        shutil.copyfile(path, build / path.name)
    monkeypatch.setenv("MEDZOO_KERNEL_CACHE", str(folder))
    monkeypatch.setenv("CXX", _copying_compiler(tmp_path / "copying-c++", good))
    kernels.reset()
    yield build
    kernels.reset()


@needs_compiler
def test_a_garbage_library_is_discarded_with_one_warning_and_built_again(cache, caplog):
    (library,) = cache.glob("*.so")
    whole = library.read_bytes()
    damage(library, "garbage")
    with caplog.at_level(logging.WARNING, logger="medzoo.accel.kernels"):
        assert runtime.fused_kernels() is not None
    assert len(warnings_about(caplog, library.name)) == 1 and len(caplog.records) == 1, caplog.text
    assert library.read_bytes() == whole


@needs_compiler
def test_a_damaged_failure_note_is_discarded_and_the_build_tried_again(cache, caplog):
    shutil.rmtree(cache)
    note = cache.with_suffix(".failed")
    note.write_bytes(b"\x00\xff\xfe")
    with caplog.at_level(logging.WARNING, logger="medzoo.accel.kernels"):
        assert runtime.fused_kernels() is not None
    assert len(warnings_about(caplog, note.name)) == 1 and not note.exists()


@needs_compiler
@pytest.mark.slow
def test_a_truncated_library_never_reaches_dlopen(cache):
    """In a child process: a truncated library that reached ``dlopen`` would kill it with SIGBUS."""
    (library,) = cache.glob("*.so")
    whole = library.read_bytes()
    damage(library, "truncate")
    code = ("import logging, sys; logging.basicConfig(level=logging.WARNING, format='%(message)s')\n"
            "from medzoo import runtime; sys.exit(0 if runtime.fused_kernels() is not None else 3)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [line for line in done.stderr.splitlines() if library.name in line and "discarding" in line]
    assert library.read_bytes() == whole
