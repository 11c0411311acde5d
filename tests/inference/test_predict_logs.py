"""``medzoo predict`` whose output is not a terminal writes one line per case (no bar, no carriage return);
``--log-file`` keeps them in a file."""

from __future__ import annotations

import shutil
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_predict_writes_one_line_per_case_to_its_log_file(tmp_path, capsys):
    from medzoo.cli import main

    run = Path(shutil.copytree(FIXTURES / "run_v0", tmp_path / "run"))
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a", "b"):
        shutil.copy(FIXTURES / "run_v0_case" / "input.nii.gz", inputs / f"{name}.nii.gz")
    log_file = tmp_path / "predict.log"
    code = main(["predict", "--model", str(run), "--input", str(inputs), "--output", str(tmp_path / "out"),
                 "--backend", "torch", "--amp", "none", "--device", "cpu", "--log-file", str(log_file)])
    assert code == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.out + captured.err  # pytest's capture is no terminal: no bar
    lines = [line for line in log_file.read_text().splitlines() if " predict " in line]
    assert len(lines) == 2, log_file.read_text()
    assert "predict 1/2 | a in " in lines[0] and "predict 2/2 | b in " in lines[1]
    assert all("elapsed" in line and "remaining" in line and "\r" not in line for line in lines)
