"""The read -> compute -> write pipeline of :func:`medzoo.inference.predict`.

Cases are read by a prefetching thread, predicted on the calling thread and written (atomically) by a
writer thread, so reading, computing and writing overlap; the bounded queues hold at most one case being
read ahead and two being written. A case that fails is listed in the :class:`PredictionReport` and the
others still run. The per-case progress (a bar on a terminal, one line per case elsewhere:
:class:`medzoo.logs.Progress`) lives here, and only here.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medzoo.errors import MedzooError
from medzoo.inference.inputs import InputCase, read_case
from medzoo.io.volume import Volume
from medzoo.logs import Progress

log = logging.getLogger(__name__)

__all__ = ["PredictionReport", "run_pipeline"]

#: ``predict_case(image, probabilities) -> (label volume, probability volume or None)``
PredictCase = Callable[[Volume, bool], "tuple[Volume, Volume | None]"]
#: ``write_labels(label volume, case, path) -> the path written``
WriteLabels = Callable[[Volume, InputCase, Path], Path]


@dataclass
class PredictionReport:
    """What :func:`medzoo.inference.predict` did.

    Attributes:
        written: label-map files written, in case order.
        failed: ``(case name, one-line reason)`` for every case that could not be predicted.
        probabilities: probability files written (with ``save_probabilities``).
        seconds: wall-clock time of the whole run.
        skipped: outputs that were there already and kept (with ``skip_existing``).
    """

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    probabilities: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    skipped: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every case was predicted."""
        return not self.failed


_DONE = object()


def run_pipeline(
    predict_case: PredictCase,
    cases: Sequence[InputCase],
    output_dir: Path,
    save_probabilities: bool = False,
    report: PredictionReport | None = None,
    progress: bool = False,
    write_labels: WriteLabels | None = None,
) -> PredictionReport:
    """Predict ``cases`` into ``output_dir``: a reader thread, ``predict_case`` on this thread, a writer thread.

    Args:
        predict_case: e.g. :meth:`medzoo.inference.Predictor.predict_case`.
        cases: from :func:`~medzoo.inference.inputs.collect_cases` or ``collect_layout_cases``.
        output_dir: where label maps (and ``<case>_probabilities.npz``) go; created if missing.
        save_probabilities: also write the probabilities (float16 (K, *S) + affine).
        report: a report to fill (default: a new one).
        progress: a per-case progress bar where the output is a terminal (one log line per case is written
            either way, and is the only progress elsewhere).
        write_labels: writes a case's label map to a path and returns the path written (default: the
            volume writer, by the path's suffix).

    Returns:
        The report: written files in case order, failures sorted by case name.
    """
    from medzoo.io.readers import write_volume

    report = report if report is not None else PredictionReport()
    write_labels = write_labels or (lambda labels, case, path: write_volume(labels, path))
    read_q: queue.Queue = queue.Queue(maxsize=1)
    write_q: queue.Queue = queue.Queue(maxsize=2)
    lock = threading.Lock()
    stop = threading.Event()

    def fail(case: InputCase, err: BaseException) -> None:
        message = str(err) if isinstance(err, (MedzooError, OSError)) else f"{type(err).__name__}: {err}"
        if not isinstance(err, (MedzooError, OSError)):
            log.debug("case %s failed", case.name, exc_info=err)
        with lock:
            report.failed.append((case.name, message))
        log.error("%s: %s", case.name, message)

    def reader() -> None:
        for case in cases:
            if stop.is_set():
                break
            try:
                item: Any = read_case(case)
            except Exception as err:  # noqa: BLE001 - every failure is reported per case
                item = err
            read_q.put((case, item))
        read_q.put(_DONE)

    def writer() -> None:
        while (job := write_q.get()) is not _DONE:
            case, labels, probs = job
            try:
                out = write_labels(labels, case, output_dir / case.output_name)
                with lock:
                    report.written.append(out)
                if probs is not None:
                    path = save_probability_file(probs, output_dir / f"{case.name}_probabilities.npz")
                    with lock:
                        report.probabilities.append(path)
            except Exception as err:  # noqa: BLE001
                fail(case, err)

    output_dir.mkdir(parents=True, exist_ok=True)
    threads = [threading.Thread(target=reader, daemon=True), threading.Thread(target=writer, daemon=True)]
    for t in threads:
        t.start()
    progress_lines = Progress(len(cases), "predict", "case", show_bar=progress)
    try:
        while (item := read_q.get()) is not _DONE:
            case, image = item
            t0 = time.monotonic()
            if isinstance(image, BaseException):
                fail(case, image)
            else:
                try:
                    labels, probs = predict_case(image, save_probabilities)
                    del image
                    write_q.put((case, labels, probs))
                except Exception as err:  # noqa: BLE001
                    fail(case, err)
            progress_lines.advance(f"{case.name} in {time.monotonic() - t0:.1f}s")
    finally:
        stop.set()
        # drain the reader so it can finish, then stop the writer after the queued writes
        while threads[0].is_alive():
            try:
                read_q.get(timeout=0.1)
            except queue.Empty:
                pass
        write_q.put(_DONE)
        threads[1].join()
        progress_lines.close()
    order = {c.output_name: i for i, c in enumerate(cases)}
    report.written.sort(key=lambda p: order.get(p.name, 0))
    report.failed.sort(key=lambda f: f[0])
    return report


def save_probability_file(probs: Volume, path: Path) -> Path:
    """Write ``probabilities`` (float16 (K, *S)) and ``affine`` to an ``.npz`` file, atomically."""
    from medzoo.utils import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            order = probs.meta.get("regions_class_order")  # region outputs: how medzoo ensemble paints them
            extra = {} if order is None else {"regions_class_order": np.asarray(order, dtype=np.int64)}
            np.savez(fh, probabilities=probs.array.astype(np.float16, copy=False), affine=probs.affine, **extra)

    atomic_write(path, write)
    return path
