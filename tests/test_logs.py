"""Progress on a terminal (a bar) and elsewhere (one plain line per unit, never a carriage return)."""

from __future__ import annotations

import io
import logging

import pytest

from medzoo.engine.callbacks import ProgressBar
from medzoo.logs import Progress, add_log_file, format_seconds, interactive, remove_log_file


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_interactive_follows_the_stream():
    assert interactive(FakeTTY())
    assert not interactive(io.StringIO())


def test_format_seconds():
    assert format_seconds(42.4) == "42s"
    assert format_seconds(185) == "3m05s"
    assert format_seconds(3720) == "1h02m"
    assert format_seconds(None) == "?" and format_seconds(float("nan")) == "?"


def test_progress_draws_a_bar_on_a_terminal(caplog):
    tty = FakeTTY()
    with caplog.at_level(logging.INFO, logger="medzoo"):
        progress = Progress(3, "predict", "case", stream=tty)
        for name in ("a", "b", "c"):
            progress.advance(name)
        progress.close()
    assert "\r" in tty.getvalue() and "predict" in tty.getvalue()
    assert not [r for r in caplog.records if r.getMessage().startswith("predict")]


def test_progress_writes_one_line_per_unit_elsewhere(caplog):
    pipe = io.StringIO()
    with caplog.at_level(logging.INFO, logger="medzoo"):
        progress = Progress(3, "predict", "case", stream=pipe)
        for name in ("a", "b", "c"):
            progress.advance(f"{name}.nii.gz")
        progress.close()
    assert pipe.getvalue() == ""
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and lines[0].startswith("predict 1/3 | a.nii.gz | elapsed ")
    assert all("remaining" in line and "\r" not in line for line in lines)
    assert lines[-1].endswith("remaining 0s")


def _one_epoch(callback: ProgressBar, epoch: int = 1) -> None:
    callback.on_epoch_start(epoch - 1, 4)
    for step in range(4):
        callback.on_step_end(step + 1, 0.5)
    callback.on_epoch_end(epoch, {"epoch": epoch, "train_loss": 0.5, "lr": 1e-3, "val_dice_mean": 0.75,
                                  "seconds": 12.0})


@pytest.mark.parametrize("terminal", [True, False])
def test_training_progress_on_a_terminal_and_in_a_file(terminal, caplog):
    stream = FakeTTY() if terminal else io.StringIO()
    callback = ProgressBar(10, show_bar=True, stream=stream)
    callback.on_train_start(None, 0)
    with caplog.at_level(logging.INFO, logger="medzoo"):
        _one_epoch(callback, 1)
        _one_epoch(callback, 2)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2  # one line per epoch in both modes
    assert lines[1].startswith("epoch 2 | loss 0.5000 | lr 1.00e-03 | val dice 0.7500 | elapsed 12s, remaining ")
    assert "remaining ?" not in lines[1]  # known after the first epoch of the session
    if terminal:
        assert "\r" in stream.getvalue() and "epoch 1/10" in stream.getvalue()
    else:
        assert stream.getvalue() == ""


def test_training_progress_under_a_time_budget_counts_down_the_budget(caplog):
    callback = ProgressBar(10**9, budget_seconds=600.0, stream=io.StringIO())
    callback.on_train_start(None, 0)
    with caplog.at_level(logging.INFO, logger="medzoo"):
        _one_epoch(callback)
    assert caplog.records[-1].getMessage().endswith("elapsed 12s, remaining 9m48s")


def test_log_file_keeps_the_lines(tmp_path):
    path = tmp_path / "logs" / "train.log"
    logger = logging.getLogger("medzoo")
    level = logger.level
    logger.setLevel(logging.INFO)
    handler = add_log_file(path)
    try:
        Progress(2, "predict", stream=io.StringIO()).advance("case_1")
        logging.getLogger("medzoo.engine.trainer").debug("not at this level")
    finally:
        remove_log_file(handler)
        logger.setLevel(level)
    text = path.read_text()
    assert "predict 1/2 | case_1" in text and "not at this level" not in text
    assert handler not in logger.handlers
