"""Which CPU runtime predicts a network faster on this machine: a short timed race, run once per export.

Neither OpenVINO nor PyTorch wins everywhere. On the 2-core development CPU (AMX) OpenVINO was 1.0-1.07x as
fast as PyTorch on hippocampus-sized windows and 1.3x on the contiguous-layout ResNets, while PyTorch in
channels-last was 1.2x as fast on the 96^3 windows of ``python -m benchmarks.sliding_window``; a laptop
without AMX, or more threads, may order them otherwise.
So the ``"auto"`` backend times both on one batch of the windows the sliding window will feed them and
keeps the faster (see :func:`medzoo.inference.backends.load_backend`, which records the result). PyTorch runs
in the precision it would predict in: under bf16 autocast on a CPU with native bf16 (``amp="auto"``), where
it was 3.2-3.3x as fast as OpenVINO's fp32 for unet3d and segresnet and 0.84-0.91x for the deeper MedicalNet
ResNets (batch 4 of 64^3 windows).
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
                  x: torch.Tensor, torch_dtype: torch.dtype | None = None) -> dict[str, Any]:  # fmt: skip
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
        torch_dtype: PyTorch runs under CPU autocast to this dtype (bf16), as it would predict; None: fp32.

    Returns:
        ``{"openvino_s", "torch_s", "winner"}``; the winner is "torch" only when PyTorch is at least
        ``TORCH_MARGIN`` times as fast.
    """
    torch_side = torch_model if torch_dtype is None else _Autocast(torch_model, torch_dtype)
    sides = {"openvino": openvino_model, "torch": torch_side}
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
    log.info("one window batch %s: OpenVINO %.3f s, PyTorch%s %.3f s; predicting with %s",
             "x".join(map(str, x.shape)), best["openvino"], " (bf16)" if torch_dtype is not None else "",
             best["torch"], "PyTorch" if winner == "torch" else "OpenVINO")  # fmt: skip
    return {"openvino_s": best["openvino"], "torch_s": best["torch"], "winner": winner}


class _Autocast(torch.nn.Module):
    """``model`` called under CPU autocast to ``dtype``, as the sliding window runs it."""

    def __init__(self, model: Callable[[torch.Tensor], Any], dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: torch.Tensor) -> Any:
        with torch.autocast("cpu", dtype=self.dtype):
            return self.model(x)
