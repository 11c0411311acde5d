"""``medzoo train`` whose output is not a terminal writes one line per epoch, no progress bars, and
``--log-file`` keeps the same lines in a file."""

from __future__ import annotations

import subprocess
import sys


def test_train_to_a_pipe_writes_lines_not_bars(tmp_path):
    from medzoo.data.phantom import make_phantom_dataset

    data = make_phantom_dataset(tmp_path / "phantom", cases=3, seed=0, shape=(20, 20, 16))
    log_file = tmp_path / "train.log"
    proc = subprocess.run(
        [sys.executable, "-m", "medzoo", "train", "--data", str(data), "--out", str(tmp_path / "run"),
         "--model", "unet3d", "--model-arg", "features=[4, 8]", "--epochs", "2", "--iterations", "2",
         "--batch-size", "2", "--patch-size", "16", "16", "16", "--device", "cpu", "--num-workers", "0",
         "--log-file", str(log_file)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    output = proc.stdout + proc.stderr
    assert "\r" not in output
    epoch_lines = [line for line in proc.stderr.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2, proc.stderr
    for line in epoch_lines:
        assert all(part in line for part in ("loss ", "lr ", "val dice ", "elapsed ", "remaining ")), line
    logged = log_file.read_text()
    assert "\r" not in logged
    assert sum(" epoch " in line for line in logged.splitlines()) == 2
    assert epoch_lines[-1] in logged
