"""Cohorts under torchrun: each rank's share of the cases, every case exactly once."""

from __future__ import annotations

from medzoo.engine.distributed import DistInfo
from medzoo.inference.cohort import gather_to_main, rank_share


def test_rank_shares_cover_every_case_exactly_once_and_are_deterministic():
    cases = [f"case{i:02d}" for i in range(11)]
    for world in (1, 2, 3, 4, 16):
        shares = [rank_share(cases, DistInfo(rank=r, world_size=world)) for r in range(world)]
        assert sorted(c for share in shares for c in share) == cases
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
        assert shares == [rank_share(cases, DistInfo(rank=r, world_size=world)) for r in range(world)]
    assert rank_share(cases[:2], DistInfo(rank=3, world_size=4)) == []  # more ranks than cases


def test_without_a_process_group_gather_returns_the_local_object():
    assert gather_to_main({"written": 3}) == [{"written": 3}]
