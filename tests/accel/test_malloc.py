"""medzoo.accel.malloc, through medzoo.runtime.tune_malloc: freed activations are reused instead of
page-faulted back in every step."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from medzoo import runtime
from medzoo.accel import malloc

# A step's worth of activations: tensors (40 MiB) over glibc's largest dynamic mmap threshold (32 MiB), so with
# glibc's defaults every free unmaps them and every step faults them in again, page by page. Only allocation
# and first touch, no arithmetic: the count of page faults is the kernel's and does not depend on how fast or
# busy the machine is (the speed this buys is measured by benchmarks/training_step.py, dna vs dna_tuned_malloc).
_CHILD = textwrap.dedent("""
    import resource, sys
    from medzoo import runtime
    if sys.argv[1] == "1":
        assert runtime.tune_malloc(True)
    import torch
    torch.set_num_threads(1)
    def step():
        for _ in range(2):
            torch.empty(10 << 20).fill_(1.0)  # 40 MiB of float32, allocated, touched, freed
    step(); step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        step()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 3)
""")


def _faults_per_step(tuned: bool) -> int:
    out = subprocess.run([sys.executable, "-c", _CHILD, "1" if tuned else "0"], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(malloc._glibc() is None, reason="needs glibc")
def test_tuned_malloc_stops_page_faulting_every_step() -> None:
    default, tuned = _faults_per_step(False), _faults_per_step(True)
    if default < 5000:
        pytest.skip(f"glibc already reuses the memory here ({default} faults per step)")
    assert tuned * 5 < default, (tuned, default)


def test_tune_malloc_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(malloc, "_malloc_tuned", False)
    monkeypatch.setenv("MEDZOO_TUNE_MALLOC", "0")
    assert runtime.tune_malloc() is False
    assert malloc._malloc_tuned is False
    monkeypatch.setenv("MEDZOO_TUNE_MALLOC", "1")
    assert runtime.tune_malloc(enable=False) is False
    assert malloc._malloc_tuned is False


def test_tune_malloc_is_a_no_op_off_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(malloc, "_malloc_tuned", False)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert malloc._glibc() is None
    assert runtime.tune_malloc(True) is False
    runtime.release_memory()  # no-op, no error


@pytest.mark.skipif(malloc._glibc() is None, reason="needs glibc")
@pytest.mark.parametrize("setting", ["1", "0"])
def test_building_a_predictor_tunes_malloc_unless_switched_off(tmp_path, monkeypatch, setting) -> None:
    from medzoo.inference.predictor import Predictor
    from support.inference import make_run

    run, _ = make_run(tmp_path / "run", "unet3d", 1, 2, patch_size=(16, 16, 16), model_kwargs={"features": [4, 8]})
    monkeypatch.setattr(malloc, "_malloc_tuned", False)
    monkeypatch.setenv("MEDZOO_TUNE_MALLOC", setting)
    Predictor.from_run(run, device="cpu")  # the notebook path, without predict()
    assert malloc._malloc_tuned is (setting == "1")
