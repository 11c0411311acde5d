"""Progress that reads well anywhere: bars on a terminal, plain lines everywhere else.

On a terminal (or in a notebook) long loops draw a tqdm bar, redrawn in place. When the output is a file, a
pipe or a job scheduler's log, a bar would leave one carriage-return frame per update behind; there the loops
write one plain line per finished unit of work instead (an epoch of training, a predicted case), each with the
time elapsed and the time remaining. Lines go through :mod:`logging` (logger ``medzoo``), so
:func:`add_log_file` (``--log-file PATH``) also keeps them in a file.

    progress = Progress(total=len(cases), desc="predict", unit="case", show_bar=True)
    for case in cases:
        ...
        progress.advance(f"{case.name} in {seconds:.1f}s")
    progress.close()
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("medzoo")

LOG_FILE_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def interactive(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (default ``sys.stderr``, where bars are drawn) is a terminal or a notebook's output:
    the places where a bar redrawn in place reads well."""
    stream = sys.stderr if stream is None else stream
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):  # a closed or file-less stream
        return False
    return _in_notebook()


def _in_notebook() -> bool:
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    return type(shell).__name__ == "ZMQInteractiveShell"


def format_seconds(seconds: float) -> str:
    """``"42s"``, ``"3m05s"``, ``"1h02m"`` (``"?"`` for an unknown or negative time)."""
    if seconds is None or not seconds >= 0 or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def bar(total: int | None, desc: str, unit: str = "it", show_bar: bool = True, stream: IO[str] | None = None,
        leave: bool = False):
    """A tqdm bar when ``show_bar`` and ``stream`` is interactive (:func:`interactive`), else None."""
    if not show_bar or not interactive(stream):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True, file=stream)


class Progress:
    """Progress over ``total`` units: a bar on a terminal, one log line per unit elsewhere.

    Args:
        total: units expected (None: unknown; no remaining time is given).
        desc: what is counted, first word of each line ("predict", "epoch").
        unit: the unit's name for the bar.
        show_bar: draw a bar where the output is interactive (``--no-progress`` turns it off; lines stay).
        stream: where the bar goes (default ``sys.stderr``).
    """

    def __init__(self, total: int | None, desc: str, unit: str = "it", show_bar: bool = True,
                 stream: IO[str] | None = None) -> None:
        self.total, self.desc = total, desc
        self.done = 0
        self.start = time.monotonic()
        self.bar = bar(total, desc, unit, show_bar, stream)

    def advance(self, message: str = "", **postfix: Any) -> None:
        """One unit done: the bar moves (with ``postfix``), or one line ``desc i/total message | elapsed ...``."""
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            if postfix:
                self.bar.set_postfix(**postfix)
            return
        elapsed = time.monotonic() - self.start
        count = f"{self.done}/{self.total}" if self.total else str(self.done)
        remaining = elapsed / self.done * (self.total - self.done) if self.total else None
        parts = [f"{self.desc} {count}"] + ([message] if message else [])
        parts.append(f"elapsed {format_seconds(elapsed)}, remaining {format_seconds(remaining)}")
        log.info(" | ".join(parts))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def add_log_file(path: str | Path, logger: str = "medzoo") -> logging.Handler:
    """Also write ``logger``'s records to ``path`` (appended, with timestamps; the logger's level decides which,
    as on the console); returns the handler, for :func:`remove_log_file`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FILE_FORMAT))
    logging.getLogger(logger).addHandler(handler)
    return handler


def remove_log_file(handler: logging.Handler, logger: str = "medzoo") -> None:
    logging.getLogger(logger).removeHandler(handler)
    handler.close()


@contextlib.contextmanager
def log_file(path: str | Path | None, logger: str = "medzoo") -> Iterator[None]:
    """Also write ``logger``'s records to ``path`` while the block runs (nothing when ``path`` is None)."""
    handler = add_log_file(path, logger) if path else None
    try:
        yield
    finally:
        if handler is not None:
            remove_log_file(handler, logger)
