"""The compiled-kernel cache heals: a damaged library or note is discarded with one warning and built again,
and the layers keep working (a truncated library must never reach ``dlopen``, which dies of SIGBUS).
``tests/accel/test_kernels.py`` covers each kind of damage in this process; here the user's view."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from medzoo import runtime
from medzoo.accel import kernels
from medzoo.accel.norm import instance_norm_act
from support.reliability import damage, warnings_about


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A kernel cache holding this machine's checked build (from the usual cache, built there if need be),
    and a stand-in for the compiler that puts that build back (a real build takes 2-60 s). Yields the
    library's path in the new cache."""
    built = runtime.fused_kernels()
    if built is None:
        pytest.skip("medzoo's CPU kernels are unavailable here")
    good = tmp_path / "good.so"
    shutil.copyfile(built.path, good)
    folder = tmp_path / "kernels" / built.path.parent.name
    shutil.copytree(built.path.parent, folder)

    def rebuild(into, name):
        into.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(good, into / f"{name}.so")
        return into / f"{name}.so"

    monkeypatch.setattr(kernels, "_build", rebuild)
    monkeypatch.setenv("MEDZOO_KERNEL_CACHE", str(tmp_path / "kernels"))
    kernels.reset()
    yield folder / built.path.name
    kernels.reset()


def _layers_work() -> None:
    x = torch.randn(2, 3, 4, 5, 6)
    torch.testing.assert_close(instance_norm_act(x, None, None, 1e-5, 0.01),
                               F.leaky_relu(F.instance_norm(x), 0.01), atol=1e-5, rtol=1e-5)  # fmt: skip


@pytest.mark.parametrize("how", ["truncate", "garbage"])
def test_a_damaged_library_is_discarded_with_one_warning_and_built_again(cache, caplog, how):
    whole = cache.read_bytes()
    damage(cache, how)
    with caplog.at_level(logging.WARNING):
        assert runtime.fused_kernels() is not None
    assert len(warnings_about(caplog, cache.name)) == 1 and len(caplog.records) == 1, caplog.text
    assert cache.read_bytes() == whole
    _layers_work()


def test_a_damaged_failure_note_is_discarded_and_the_build_tried_again(cache, caplog):
    shutil.rmtree(cache.parent)
    note = cache.parent.with_suffix(".failed")
    note.write_bytes(b"\x00\xff\xfe")
    with caplog.at_level(logging.WARNING):
        assert runtime.fused_kernels() is not None
    assert len(warnings_about(caplog, note.name)) == 1 and not note.exists(), caplog.text
    _layers_work()


@pytest.mark.slow
def test_a_truncated_library_is_rebuilt_by_a_real_compiler_in_a_fresh_process(cache):
    """In a child process (a truncated library that reached ``dlopen`` would kill it with SIGBUS), with the
    real compiler."""
    damage(cache, "truncate")
    code = ("import logging, sys; logging.basicConfig(level=logging.WARNING, format='%(message)s')\n"
            "from medzoo import runtime; sys.exit(0 if runtime.fused_kernels() is not None else 3)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env=os.environ.copy())  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert [line for line in done.stderr.splitlines() if cache.name in line and "discarding" in line]
    assert (cache.parent / "checked").read_text() == kernels._check_stamp(cache)
