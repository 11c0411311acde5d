"""medzoo.accel.threads through medzoo.runtime.limit_worker_threads: a helper thread's torch ops get one
OpenMP thread, and the main thread keeps its own count (OpenMP's default is the reference)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from medzoo import runtime


def test_a_worker_thread_gets_one_openmp_thread_and_the_main_thread_keeps_its_own():
    before = torch.get_num_threads()
    with ThreadPoolExecutor(1) as plain:
        default = plain.submit(torch.get_num_threads).result()
    with ThreadPoolExecutor(1, initializer=runtime.limit_worker_threads) as limited:
        inside = limited.submit(torch.get_num_threads).result()
        same = limited.submit(lambda: torch.equal(torch.ones(64, 64) @ torch.ones(64, 64),
                                                  torch.full((64, 64), 64.0))).result()
    assert inside == 1 and same
    assert torch.get_num_threads() == before and default == before
