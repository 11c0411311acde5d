"""Which CPU runtime predicts a network faster on this machine: a short timed race, run once per export.

Neither OpenVINO nor PyTorch wins everywhere. On the 2-core development CPU (AMX) OpenVINO was 1.0-1.07x as
fast as PyTorch on hippocampus-sized windows and 1.3x on the contiguous-layout ResNets, while PyTorch in
channels-last was 1.2x as fast on the 96^3 windows of ``python -m benchmarks.sliding_window``; a laptop
without AMX, or more threads, may order them otherwise.
So the ``"auto"`` backend times both on one batch of the windows the sliding window will feed them and
keeps the faster (see :func:`medzoo.inference.backends.load_backend`, which records the result).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)

__all__ = ["TORCH_MARGIN", "race_runtimes", "time_call"]

# PyTorch must be this much faster to be chosen: OpenVINO held about a third less memory in our benchmarks,
# and a margin keeps a near-tie from flipping between checkpoints of one run.
TORCH_MARGIN = 1.05
_CLEAR_LEAD = 1.15  # two timed rounds this far apart decide; closer ones get a third round


def time_call(model: Callable[[torch.Tensor], Any], x: torch.Tensor) -> float:
    """Seconds one ``model(x)`` takes, under ``torch.inference_mode`` (as the sliding window runs it)."""
    with torch.inference_mode():
        started = time.perf_counter()
        model(x)
        return time.perf_counter() - started


def race_runtimes(openvino_model: Callable[[torch.Tensor], Any], torch_model: Callable[[torch.Tensor], Any],
                  x: torch.Tensor) -> dict[str, Any]:  # fmt: skip
    """Time OpenVINO against PyTorch on one window batch and name the faster.

    Each side runs once untimed (primitive creation, first-touch allocations), then the two alternate;
    the fastest call of each counts. Two timed rounds decide when the two are more than 15 % apart,
    otherwise a third is run. One timed round was not enough: in six of seven processes that had just
    exported the network, PyTorch's second call on the phantom's 96^3 windows took 0.62-1.0 s where its
    third took 0.51-0.56 s, and that once handed the race to OpenVINO (0.60-0.66 s).

    Args:
        openvino_model: the compiled export (``OpenVinoModel``).
        torch_model: the network, in the layout and on the device it will predict with.
        x: (N, C, *P) float32, the batch size and window size the sliding window feeds.

    Returns:
        ``{"openvino_s", "torch_s", "winner"}``; the winner is "torch" only when PyTorch is at least
        ``TORCH_MARGIN`` times as fast.
    """
    sides = {"openvino": openvino_model, "torch": torch_model}
    for model in sides.values():
        time_call(model, x)
    best = {name: float("inf") for name in sides}
    for round_ in range(3):
        for name, model in sides.items():
            best[name] = min(best[name], time_call(model, x))
        lead = max(best.values()) / min(best.values())
        if round_ == 1 and lead > _CLEAR_LEAD:
            break
    winner = "torch" if best["openvino"] >= TORCH_MARGIN * best["torch"] else "openvino"
    log.info("one window batch %s: OpenVINO %.3f s, PyTorch %.3f s; predicting with %s",
             "x".join(map(str, x.shape)), best["openvino"], best["torch"],
             "PyTorch" if winner == "torch" else "OpenVINO")  # fmt: skip
    return {"openvino_s": best["openvino"], "torch_s": best["torch"], "winner": winner}
