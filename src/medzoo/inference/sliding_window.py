"""Sliding-window inference: run a patch-trained network over a whole volume and blend the windows.

Window positions follow MONAI's ``dense_patch_slices`` (and nnU-Net's idea): along each axis, steps of
``int(patch * (1 - overlap))`` from 0, the last window flush with the end of the volume. An axis shorter
than the patch gets one window centred on it (the missing part is zero, like MONAI's constant padding) and
the output is cropped back. Windows are weighted by a Gaussian importance map (sigma = ``sigma_scale`` x
patch, 1/8 by default, values below 1e-3 clamped to 1e-3 exactly as MONAI does) or a constant one.

What is blended: the raw network outputs (logits), as MONAI's ``sliding_window_inference`` and nnU-Net v2
do; pass ``apply_softmax=True`` to blend per-window probabilities instead (nnU-Net v1).

Memory: the volume is processed in *slabs* along the first spatial axis. Windows are visited row by row
(all windows sharing a start on axis 0), accumulated in place (``addcmul_``) into a buffer only one patch
thick on that axis, and every part of the volume no later window can touch is normalised and handed out.
So blending a (B, K, 512, 512, 512) output never holds more than (B, K, patch, 512, 512) floats of
accumulator; :func:`sliding_window_argmax` turns each finished slab into labels (and optional float16
probabilities) straight away, which is how the predictor stays memory-bounded.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Sequence

import torch

log = logging.getLogger(__name__)

__all__ = [
    "importance_map",
    "network_window",
    "sliding_window",
    "sliding_window_argmax",
    "window_starts",
]

Model = Callable[[torch.Tensor], torch.Tensor]


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """Start indices of the windows along one axis.

    Args:
        size: length of the axis.
        patch: window length.
        overlap: fraction of a window shared with the next one, in [0, 1).

    Returns:
        Increasing starts; the last window ends at ``size``. When ``size <= patch`` a single start
        ``-((patch - size) // 2)`` (the window hangs over both ends; that part is treated as zeros).
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if size <= patch:
        return [-((patch - size) // 2)]
    step = max(int(patch * (1.0 - overlap)), 1)
    starts = []
    start = 0
    while start + patch < size:
        starts.append(start)
        start += step
    starts.append(size - patch)
    return starts


def importance_map(
    patch_size: Sequence[int],
    blend: str = "gaussian",
    sigma_scale: float = 0.125,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Per-voxel weight of a window's prediction.

    Args:
        patch_size: window size per spatial axis.
        blend: "gaussian" (centre counts more than the borders) or "constant".
        sigma_scale: Gaussian sigma as a fraction of the patch size along each axis.
        device: where to create the map.

    Returns:
        float32 tensor of shape ``patch_size``; Gaussian values below 1e-3 are raised to 1e-3 (as MONAI's
        ``compute_importance_map``), so no voxel ever has weight zero.
    """
    if blend == "constant":
        return torch.ones(tuple(patch_size), dtype=torch.float32, device=device)
    if blend != "gaussian":
        raise ValueError(f"blend must be 'gaussian' or 'constant', got {blend!r}")
    weights = None
    for axis, p in enumerate(patch_size):
        sigma = p * sigma_scale
        x = torch.arange(-(p - 1) / 2.0, (p - 1) / 2.0 + 1, dtype=torch.float32, device=device)
        x = torch.exp(x**2 / (-2 * sigma**2))
        weights = x if axis == 0 else weights.unsqueeze(-1) * x[(None,) * axis]
    floor = max(float(weights.min()), 1e-3)
    return weights.clamp_(min=floor)


def _model_device(model: Model, fallback: torch.device) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            return tensor.device
    return getattr(model, "device", None) or fallback


def network_window(model: Model, patch: tuple[int, ...]) -> tuple[int, ...]:
    """The window size fed to the network: ``patch`` grown to the model card's size rule, if any."""
    card = getattr(model, "card", None)
    if card is None or not hasattr(card, "valid_size"):
        return patch
    return tuple(int(card.valid_size(p)) for p in patch)


def _mirror_sets(mirror_axes: Sequence[int] | None, spatial_dims: int) -> list[tuple[int, ...]]:
    """Every subset of ``mirror_axes`` (the empty one first), as tensor dims of a (B, C, *S) batch."""
    if not mirror_axes:
        return [()]
    axes = sorted(set(int(a) for a in mirror_axes))
    for a in axes:
        if not 0 <= a < spatial_dims:
            raise ValueError(f"mirror axis {a} is not a spatial axis (0..{spatial_dims - 1})")
    sets: list[tuple[int, ...]] = []
    for r in range(len(axes) + 1):
        sets.extend(tuple(a + 2 for a in combo) for combo in itertools.combinations(axes, r))
    return sets


def _forward(model: Model, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if isinstance(out, (list, tuple)):  # deep supervision heads: the first is full resolution
        out = out[0]
    return out


def _predict_batch(
    model: Model, x: torch.Tensor, mirrors: list[tuple[int, ...]], apply_softmax: bool
) -> torch.Tensor:
    """Network output for a window batch, averaged over the mirrored copies (flipped back)."""
    total = None
    for dims in mirrors:
        xin = torch.flip(x, dims) if dims else x
        out = _forward(model, xin)
        if apply_softmax:
            out = torch.softmax(out.float(), dim=1)
        if dims:
            out = torch.flip(out, dims)
        total = out.float() if total is None else total.add_(out)
    if len(mirrors) > 1:
        total.div_(len(mirrors))
    return total


def _empty_windows(
    inputs: torch.Tensor,
    rows: list[int],
    other_positions: list[tuple[int, ...]],
    patch: tuple[int, ...],
) -> set[tuple[int, tuple[int, ...]]]:
    """``(batch item, window start)`` of every window whose input is zero in every channel.

    Nothing is skipped when every window is empty (a blank scan is still run through the network), and
    one window of the first row is always kept so the output's class count is known from the start.
    """
    spatial = inputs.shape[2:]
    empty = set()
    for b in range(inputs.shape[0]):
        for pos in itertools.product(rows, other_positions):
            start = (pos[0], *pos[1])
            region = tuple(slice(max(s, 0), min(s + p, n)) for s, p, n in zip(start, patch, spatial))
            if not bool(inputs[(b, slice(None), *region)].any()):
                empty.add((b, start))
    everything = inputs.shape[0] * len(rows) * len(other_positions)
    if len(empty) == everything:
        return set()
    first_row = [(b, (rows[0], *pos)) for b in range(inputs.shape[0]) for pos in other_positions]
    if all(item in empty for item in first_row):
        empty.discard(first_row[0])
    return empty


def _normalise(
    slab: torch.Tensor, wacc: torch.Tensor | None, n: int, may_be_uncovered: bool
) -> torch.Tensor | None:
    """Divide the weighted sums ``slab`` (B, K, n, ...) by their weights in place.

    Returns the (B, n, ...) mask of voxels no window covered (their outputs stay 0), or None.
    """
    if wacc is None:
        return None
    weights = wacc[:, :, :n]
    uncovered = None
    if may_be_uncovered:
        zero = weights[:, 0] == 0
        if bool(zero.any()):
            uncovered = zero.expand(slab.shape[0], *zero.shape[1:])
            weights = weights.masked_fill(zero[:, None], 1.0)  # uncovered sums are 0: 0 / 1 keeps them 0
    slab.div_(weights)
    return uncovered


def _iter_slabs(
    inputs: torch.Tensor,
    model: Model,
    patch_size: Sequence[int],
    overlap: float | Sequence[float],
    blend: str,
    batch_size: int,
    mirror_axes: Sequence[int] | None,
    apply_softmax: bool,
    sigma_scale: float,
    progress: bool,
    device: torch.device | str | None,
    normalize: bool = True,
    skip_empty: bool = False,
) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor | None]]:
    """Yield ``(lo, hi, slab, uncovered)``: blended outputs (B, K, hi - lo, *S[1:]) for axis-0 range [lo, hi).

    Must run under ``torch.inference_mode()``. ``slab`` is a view into a reused buffer: use it (copy it)
    before asking for the next one. With ``normalize=False`` the weight map is not even kept and the slab
    holds the weighted sums (same argmax, since every voxel's classes share one positive weight).

    With ``skip_empty`` windows whose input is zero in every channel are not run; voxels no computed
    window covers hold 0 for every class, and (when normalising) ``uncovered`` is their (B, hi - lo,
    *S[1:]) bool mask (None when there are none).
    """
    if inputs.ndim not in (4, 5):
        raise ValueError(f"inputs must be (B, C, *S) with 2 or 3 spatial dims, got shape {tuple(inputs.shape)}")
    batch, channels, *spatial = inputs.shape
    nd = len(spatial)
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != nd:
        raise ValueError(f"patch_size {patch} has {len(patch)} entries for {nd} spatial dims")
    overlaps = tuple(overlap) if isinstance(overlap, Sequence) else (float(overlap),) * nd
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    out_device = inputs.device
    compute_device = torch.device(device) if device is not None else _model_device(model, out_device)
    starts = [window_starts(spatial[d], patch[d], overlaps[d]) for d in range(nd)]
    window = network_window(model, patch)
    mirrors = _mirror_sets(mirror_axes, nd)
    weights = importance_map(patch, blend, sigma_scale, device=out_device)

    depth = min(patch[0], spatial[0])  # accumulator thickness along axis 0
    other_positions = list(itertools.product(*starts[1:]))
    rows = starts[0]
    n_batches = len(rows) * -(-(batch * len(other_positions)) // batch_size)

    empty = _empty_windows(inputs, rows, other_positions, patch) if skip_empty else set()
    if empty:
        log.debug("sliding window: %d of %d window(s) have an all-zero input and are skipped",
                  len(empty), len(rows) * len(other_positions) * batch)  # fmt: skip

    acc: torch.Tensor | None = None  # (B, K, depth, *S[1:]) allocated at the first forward (K unknown before)
    # weight sums (Bw, 1, depth, *S[1:]): one map for all batch items unless skipped windows differ per item
    per_item = bool(empty) and batch > 1
    wacc = (
        torch.zeros((batch if per_item else 1, 1, depth, *spatial[1:]), dtype=torch.float32, device=out_device)
        if normalize
        else None
    )
    xbuf = torch.empty((batch_size, channels, *window), dtype=inputs.dtype, device=compute_device)
    origin = max(rows[0], 0)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_batches, desc="sliding window", unit="batch", leave=False)

    def region(pos: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """In-bounds part of a window: (slices into the volume, slices into the window)."""
        vol, win = [], []
        for d, s in enumerate(pos):
            lo, hi = max(s, 0), min(s + patch[d], spatial[d])
            vol.append(slice(lo, hi))
            win.append(slice(lo - s, hi - s))
        return tuple(vol), tuple(win)

    try:
        for r, row_start in enumerate(rows):
            if r > 0:
                # Voxels before this row's start are final: normalise, hand out, shift the buffer.
                n = row_start - origin
                slab = acc[:, :, :n]
                yield origin, row_start, slab, _normalise(slab, wacc, n, bool(empty))
                keep = depth - n
                for i in range(0, keep, n):  # blocks of n planes: source and destination never overlap
                    m = min(n, keep - i)
                    acc[:, :, i : i + m].copy_(acc[:, :, i + n : i + n + m])
                    if wacc is not None:
                        wacc[:, :, i : i + m].copy_(wacc[:, :, i + n : i + n + m])
                acc[:, :, keep:].zero_()
                if wacc is not None:
                    wacc[:, :, keep:].zero_()
                origin = row_start
            items = [
                (b, (row_start, *pos))
                for b in range(batch)
                for pos in other_positions
                if (b, (row_start, *pos)) not in empty
            ]
            for first in range(0, len(items), batch_size):
                chunk = items[first : first + batch_size]
                x = xbuf[: len(chunk)]
                partial = window != patch or any(
                    s < 0 or s + patch[d] > spatial[d] for _, pos in chunk for d, s in enumerate(pos)
                )
                if partial:
                    x.zero_()
                regions = [region(pos) for _, pos in chunk]
                for i, ((b, _), (vol, win)) in enumerate(zip(chunk, regions)):
                    x[(i, slice(None), *win)].copy_(inputs[(b, slice(None), *vol)])
                out = _predict_batch(model, x, mirrors, apply_softmax)
                if tuple(out.shape[2:]) != window:
                    raise ValueError(
                        f"the network returned spatial size {tuple(out.shape[2:])} for a window of {window}; "
                        "sliding-window inference needs outputs at the input size"
                    )
                out = out.to(out_device)
                if acc is None:
                    acc = torch.zeros(
                        (batch, out.shape[1], depth, *spatial[1:]), dtype=torch.float32, device=out_device
                    )
                for i, ((b, _), (vol, win)) in enumerate(zip(chunk, regions)):
                    local = (slice(vol[0].start - origin, vol[0].stop - origin), *vol[1:])
                    w = weights[win]
                    acc[(b, slice(None), *local)].addcmul_(out[(i, slice(None), *win)], w)
                    if wacc is not None and (per_item or b == 0):
                        wacc[(b if per_item else 0, 0, *local)].add_(w)
                if bar is not None:
                    bar.update(1)
        n = spatial[0] - origin
        slab = acc[:, :, :n]
        yield origin, spatial[0], slab, _normalise(slab, wacc, n, bool(empty))
    finally:
        if bar is not None:
            bar.close()


def sliding_window(
    inputs: torch.Tensor,
    model: Model,
    patch_size: Sequence[int],
    overlap: float | Sequence[float] = 0.5,
    blend: str = "gaussian",
    batch_size: int = 4,
    mirror_axes: Sequence[int] | None = None,
    *,
    apply_softmax: bool = False,
    sigma_scale: float = 0.125,
    progress: bool = False,
    device: torch.device | str | None = None,
    skip_empty: bool = False,
) -> torch.Tensor:
    """Blend a network's outputs over overlapping windows covering the whole input.

    Args:
        inputs: (B, C, *S) with 2 or 3 spatial dims, any size (axes shorter than the patch are padded
            with zeros for the network and cropped back).
        model: a module or callable mapping (N, C, *P') to (N, K, *P'); a ``card`` attribute with a size
            rule (``valid_size``) makes each window padded (zeros, at the end) to a valid size and cropped.
        patch_size: window size per spatial axis.
        overlap: fraction shared by neighbouring windows, per axis or one for all, in [0, 1).
        blend: "gaussian" or "constant" weighting of each window.
        batch_size: windows per forward pass.
        mirror_axes: spatial axes (0-based) for mirroring test-time augmentation: the prediction is the
            mean over every subset of these axes of flip -> network -> flip back. None: no mirroring.
        apply_softmax: blend softmax probabilities instead of raw outputs (logits, the default).
        sigma_scale: Gaussian sigma as a fraction of the patch (0.125 = 1/8, as MONAI and nnU-Net).
        progress: show a tqdm bar over window batches.
        device: device the network runs on (default: the model's parameters' device); windows are moved
            there and results come back to ``inputs.device``.
        skip_empty: do not run windows whose input is exactly zero in every channel (air outside the
            head, after ``zscore_nonzero``). Voxels with a non-zero input get exactly the same output as
            without skipping (every window covering them is run); voxels only skipped windows cover get
            0 for every class (label 0). Meant for plans that crop to the non-zero region, where the air
            is background by definition.

    Returns:
        float32 tensor (B, K, *S) on ``inputs.device``: the blended outputs.
    """
    out: torch.Tensor | None = None
    with torch.inference_mode():
        for lo, hi, slab, _ in _iter_slabs(
            inputs, model, patch_size, overlap, blend, batch_size, mirror_axes,
            apply_softmax, sigma_scale, progress, device, skip_empty=skip_empty,
        ):  # fmt: skip
            if out is None:
                with torch.inference_mode(False):
                    out = torch.empty(
                        (inputs.shape[0], slab.shape[1], *inputs.shape[2:]),
                        dtype=torch.float32,
                        device=inputs.device,
                    )
            out[:, :, lo:hi].copy_(slab)
    return out


def _argmax_into(out: torch.Tensor, scores: torch.Tensor) -> None:
    """``out[...] = scores.argmax(1)`` (first maximum wins) by K element-wise passes.

    ``Tensor.argmax`` over a non-innermost dim is slow on CPU; K compare/select passes are several times
    faster and need only one (B, *S) float temporary.
    """
    if scores.shape[1] > 255 or out.dtype != torch.uint8:
        out.copy_(scores.argmax(dim=1))
        return
    best = scores[:, 0].clone()
    out.zero_()
    for k in range(1, scores.shape[1]):
        better = scores[:, k] > best
        out.masked_fill_(better, k)
        torch.maximum(best, scores[:, k], out=best)


def sliding_window_argmax(
    inputs: torch.Tensor,
    model: Model,
    patch_size: Sequence[int],
    overlap: float | Sequence[float] = 0.5,
    blend: str = "gaussian",
    batch_size: int = 4,
    mirror_axes: Sequence[int] | None = None,
    *,
    return_probabilities: bool = False,
    apply_softmax: bool = False,
    sigma_scale: float = 0.125,
    progress: bool = False,
    device: torch.device | str | None = None,
    skip_empty: bool = False,
    activation: str = "softmax",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sliding-window label map without ever holding the full (B, K, *S) float32 output.

    Same arguments as :func:`sliding_window`. Each finished slab of blended outputs is turned into labels
    (argmax over K) at once; only one patch-thick accumulator exists at any time, and without
    ``return_probabilities`` not even the weight map is kept (the argmax of the weighted sums is the
    argmax of the blended outputs).

    Returns:
        ``(labels, probabilities)``: labels uint8 (B, *S) (int64 if K > 256) on ``inputs.device``;
        probabilities float16 (B, K, *S) (softmax of the blended logits, or the blended probabilities when
        ``apply_softmax``; with ``activation="sigmoid"``, for region outputs, the sigmoid of each blended
        channel, 0 where no window reached) if ``return_probabilities`` else None.
    """
    labels: torch.Tensor | None = None
    probs: torch.Tensor | None = None
    batch, _, *spatial = inputs.shape
    with torch.inference_mode():
        for lo, hi, slab, uncovered in _iter_slabs(
            inputs, model, patch_size, overlap, blend, batch_size, mirror_axes,
            apply_softmax, sigma_scale, progress, device, normalize=return_probabilities,
            skip_empty=skip_empty,
        ):  # fmt: skip
            k = slab.shape[1]
            if labels is None:
                with torch.inference_mode(False):
                    dtype = torch.uint8 if k <= 256 else torch.int64
                    labels = torch.empty((batch, *spatial), dtype=dtype, device=inputs.device)
                    if return_probabilities:
                        probs = torch.empty((batch, k, *spatial), dtype=torch.float16, device=inputs.device)
            # a few planes at a time to keep the temporaries small
            for s in range(0, hi - lo, 16):
                e = min(s + 16, hi - lo)
                _argmax_into(labels[:, lo + s : lo + e], slab[:, :, s:e])
                if probs is not None:
                    part = slab[:, :, s:e]
                    if activation == "sigmoid":
                        part = torch.sigmoid(part)
                    elif not apply_softmax:
                        part = torch.softmax(part, dim=1)
                    probs[:, :, lo + s : lo + e].copy_(part)
            if uncovered is not None and probs is not None:
                block = probs[:, :, lo:hi]
                block.masked_fill_(uncovered[:, None], 0.0)
                if activation != "sigmoid":  # softmax: background; regions: in none of them
                    block[:, 0].masked_fill_(uncovered, 1.0)
    return labels, probs
