"""Predicting a cohort with several processes: ``torchrun ... -m medzoo predict`` on one or many machines.

Each process (rank) takes a fixed share of the sorted case list (:func:`rank_share`: every
``world_size``-th case from its rank on), so every case is predicted by exactly one process and a rerun
gives every process the same share again; with ``skip_existing`` a rerun after a killed job skips the
outputs already written. The processes join a gloo group (CPU only: it carries the reports, not tensors,
so it works beside GPUs too) and :func:`gather_to_main` brings every rank's report to rank 0, which prints
the one summary.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch.distributed as dist

from medzoo.engine.distributed import DistInfo, env_info
from medzoo.inference.inputs import InputCase
from medzoo.inference.pipeline import PredictionReport

log = logging.getLogger(__name__)

__all__ = ["cohort_group", "gather_to_main", "merge_reports", "rank_share", "remove_interrupted_writes",
           "split_existing"]

T = TypeVar("T")
#: How long rank 0 waits at the end for the slowest rank (its share can take hours on a large cohort).
GATHER_TIMEOUT = datetime.timedelta(days=7)


def rank_share(items: Sequence[T], info: DistInfo | None = None) -> list[T]:
    """This rank's share of ``items``: ``items[rank::world_size]`` (empty when there are fewer items than
    ranks; all of them without torchrun)."""
    info = info or env_info()
    if not info.enabled:
        return list(items)
    return list(items[info.rank :: info.world_size])


@contextmanager
def cohort_group() -> Iterator[DistInfo]:
    """Join a gloo process group for the prediction when running under torchrun (``WORLD_SIZE`` > 1), and
    leave it after; yields the rank and world size. Without torchrun, or when a group exists already, it
    joins nothing."""
    info = env_info()
    joined = False
    if info.enabled and dist.is_available() and not dist.is_initialized():
        dist.init_process_group(backend="gloo", timeout=GATHER_TIMEOUT)
        joined = True
        log.debug("rank %d/%d joined the prediction group", info.rank, info.world_size)
    try:
        yield info
    finally:
        if joined:
            dist.destroy_process_group()


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` on rank 0, in rank order (None on the other ranks); ``[obj]`` without a group."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    rank = dist.get_rank()
    box: list[Any] | None = [None] * dist.get_world_size() if rank == 0 else None
    dist.gather_object(obj, box, dst=0)
    return box


def remove_interrupted_writes(output_dir: Path, started: float, info: DistInfo) -> list[Path]:
    """Remove the temporary files of atomic writes that an earlier prediction, killed midway, left in
    ``output_dir`` (those older than ``started``, a ``time.time()``), with one info line. Rank 0 removes them
    while the other ranks wait, so no rank of this job has begun writing yet; returns the files removed."""
    from medzoo.utils import remove_stale_temp_files

    removed = remove_stale_temp_files(output_dir, started) if info.is_main else []
    if removed:
        log.info("removed %d temporary file(s) that an interrupted earlier run left in %s", len(removed), output_dir)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    return removed


def split_existing(
    cases: Sequence[InputCase], output_dir: Path, skip_existing: bool
) -> tuple[list[InputCase], list[Path]]:
    """``(cases to predict, outputs kept)``: with ``skip_existing``, a case whose output file is there already
    is kept as it is (outputs are written atomically, so an existing file is a whole one; the temporary file
    of a write that was killed has another name, so it never counts)."""
    if not skip_existing:
        return list(cases), []
    todo = [case for case in cases if not (output_dir / case.output_name).is_file()]
    kept = [output_dir / case.output_name for case in cases if (output_dir / case.output_name).is_file()]
    if kept:
        log.info("%d of %d case(s) already predicted in %s; skipping them", len(kept), len(cases), output_dir)
    return todo, kept


def merge_reports(reports: Sequence[PredictionReport]) -> PredictionReport:
    """One report for the whole job from every rank's (its time: the slowest rank's)."""
    merged = PredictionReport(seconds=max(report.seconds for report in reports))
    for report in reports:
        merged.written += report.written
        merged.failed += report.failed
        merged.probabilities += report.probabilities
        merged.skipped += report.skipped
    merged.written.sort()
    merged.failed.sort()
    merged.skipped.sort()
    return merged
