"""The :class:`PatchLoader`: an endless stream of augmented training batches from cached cases.

Batch ``n`` is a pure function of ``(seed, n)`` (:meth:`PatchLoader.make_batch`), so the stream is the same
whatever the number of background workers. Workers are threads by default (numpy memmap reads and torch
ops release the GIL; on a 2-core machine this beats processes, see ``benchmarks/data_pipeline.py``), or
processes through a torch DataLoader (``worker_mode="process"``).

Per sample: pick a case, pick a patch centre with the sampler (the last ``oversample_foreground`` fraction
of each batch is forced onto foreground, like nnU-Net), draw the spatial augmentation, crop the region
it needs around the centre from the memory-mapped case (zero-padded at the borders), warp it to the patch
(one resampling, :meth:`~medzoo.transforms.augment.SpatialAugment.warp`); then the batch goes through flips /
intensity transforms on the small patches.

2D training on 3D cases (``spatial_dims=2``): a slice along ``slice_axis`` is sampled, and
``context_slices`` neighbours on each side are stacked as extra channels, channel-major: for C modalities
the channels are ``[m0 s-c, ..., m0 s+c, m1 s-c, ...]`` (see :func:`slices_with_context`, which the
predictor uses to build the same input). Slices beyond the volume are zeros.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from medzoo import runtime
from medzoo.data.sampling import crop_with_padding, get_sampler
from medzoo.errors import ConfigError
from medzoo.transforms.augment import Augmentation, build_augmentation

log = logging.getLogger(__name__)


def slices_with_context(image: torch.Tensor | np.ndarray, slice_axis: int = 2, context_slices: int = 0) -> torch.Tensor:
    """All 2D slices of a 3D image with their context, as a batch for a 2D network.

    Args:
        image: (C, I, J, K).
        slice_axis: the axis (0, 1, 2) that is sliced.
        context_slices: neighbours on each side stacked as channels (zeros beyond the volume).

    Returns:
        (N, C * (2 * context_slices + 1), A, B) float32 with N the size of ``slice_axis`` and (A, B) the
        other two axes in order. Channel order matches :class:`PatchLoader`.
    """
    x = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.array(image, dtype=np.float32))
    x = x.float()
    x = torch.movedim(x, slice_axis + 1, 1)  # (C, N, A, B)
    c = context_slices
    if c:
        x = torch.nn.functional.pad(x, (0, 0, 0, 0, c, c))
    n = x.shape[1] - 2 * c
    stacks = [x[:, i : i + n] for i in range(2 * c + 1)]  # each (C, N, A, B): offset i - c
    out = torch.stack(stacks, dim=1)  # (C, 2c+1, N, A, B)
    return out.permute(2, 0, 1, 3, 4).reshape(n, -1, *x.shape[2:]).contiguous()


class _BatchDataset(torch.utils.data.Dataset):
    """Map-style view of the batch stream for DataLoader workers (index = batch number)."""

    def __init__(self, loader: PatchLoader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, index: int):
        return self.loader.make_batch(index)


class _Count:
    """Batch numbers ``start, start + 1, ...`` (the DataLoader's sampler)."""

    def __init__(self, start: int) -> None:
        self.start = start

    def __iter__(self):
        return itertools.count(self.start)

    def __len__(self) -> int:
        return 2**62


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


class PatchLoader:
    """Endless iterator of ``(image (B, C', *P) float32, label (B, *P) int64)`` training batches.

    Args:
        cases: cached cases (:class:`~medzoo.data.cache.CachedCase` or anything with ``image (C, *S)``,
            ``label (*S)``, ``class_locations`` and ``shape``).
        patch_size: patch (3 entries, or 2 with ``spatial_dims=2``).
        batch_size: samples per batch.
        spatial_dims: 3, or 2 to train a 2D network on slices of 3D cases.
        sampler: ``foreground`` (default), ``uniform``, ``class_balanced``, ``threshold`` or a callable
            (see :mod:`medzoo.data.sampling`).
        oversample_foreground: fraction of each batch forced onto foreground (``foreground`` sampler).
        augment: ``default``, ``standard``, ``strong``, ``none`` or an
            :class:`~medzoo.transforms.augment.Augmentation`.
        seed: the stream is a function of the seed.
        num_workers: background workers (0: batches are built in ``__next__``).
        slice_axis: axis sliced when ``spatial_dims=2``.
        context_slices: neighbouring slices on each side stacked as channels (2D only).
        worker_mode: ``thread`` (default) or ``process``.
        prefetch: batches prepared ahead per worker.
        sampler_options: passed to the sampler (e.g. ``threshold=0.1`` for ``threshold``).
        mirror_axes: patch axes the augmentation may flip (``Plan.mirror_axes``); None: every axis.
    """

    def __init__(
        self,
        cases: list,
        patch_size: tuple[int, ...],
        batch_size: int,
        *,
        spatial_dims: int = 3,
        sampler="foreground",
        oversample_foreground: float = 0.33,
        augment="default",
        seed: int = 0,
        num_workers: int = 1,
        slice_axis: int = 2,
        context_slices: int = 0,
        worker_mode: str = "thread",
        prefetch: int = 2,
        sampler_options: dict | None = None,
        mirror_axes: tuple[int, ...] | None = None,
    ) -> None:
        if not cases:
            raise ConfigError("PatchLoader needs at least one case")
        self.patch_size = tuple(int(p) for p in patch_size)
        if len(self.patch_size) != spatial_dims:
            raise ConfigError(f"patch_size {patch_size} must have {spatial_dims} entries (spatial_dims={spatial_dims})")
        if spatial_dims not in (2, 3):
            raise ConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if worker_mode not in ("thread", "process"):
            raise ConfigError(f"worker_mode must be 'thread' or 'process', got {worker_mode!r}")
        self.cases = list(cases)
        self._all_labelled = all(getattr(c, "label", None) is not None for c in self.cases)
        self.batch_size = int(batch_size)
        self.spatial_dims = spatial_dims
        self.sampler = get_sampler(sampler, **(sampler_options or {}))
        self.oversample_foreground = float(oversample_foreground)
        self.augmentation: Augmentation = build_augmentation(augment, self.patch_size, mirror_axes)
        self.seed = int(seed)
        self.slice_axis = int(slice_axis)
        self.context_slices = int(context_slices) if spatial_dims == 2 else 0
        case_nd = self.cases[0].image.ndim - 1
        self._slicing = spatial_dims == 2 and case_nd == 3
        if spatial_dims == 3 and case_nd != 3:
            raise ConfigError(f"spatial_dims=3 needs 3D cases, got {case_nd}D arrays")
        self.num_workers = int(num_workers)
        self.worker_mode = worker_mode
        self.prefetch = max(1, int(prefetch))
        self._next_index = 0
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[tuple[int, Future]] = deque()
        self._dl_iter = None

    # ------------------------------------------------------------------------------------- batches

    def _sampler_patch(self) -> tuple[int, ...]:
        if not self._slicing:
            return self.patch_size
        p = list(self.patch_size)
        p.insert(self.slice_axis, 1)
        return tuple(p)

    def _crop(self, case, centre: np.ndarray, region: tuple[int, ...], out_image=None, out_label=None):
        """Image (C', *R) and label (*R) regions around ``centre`` (written into ``out_*`` when given)."""
        if not self._slicing:
            image = crop_with_padding(case.image, centre, region, out=out_image)
            label = None if case.label is None else crop_with_padding(case.label, centre, region, out=out_label)
            return image, label
        if out_image is not None:
            image, label = self._crop(case, centre, region)
            out_image[...] = image
            if label is not None:
                out_label[...] = label
            return out_image, out_label
        depth = 2 * self.context_slices + 1
        size = list(region)
        size.insert(self.slice_axis, depth)
        image = crop_with_padding(case.image, centre, size)  # (C, ..depth at slice_axis..)
        image = np.moveaxis(image, self.slice_axis + 1, 1)
        image = image.reshape((-1,) + image.shape[2:])
        label = None
        if case.label is not None:
            size[self.slice_axis] = 1
            label = np.take(crop_with_padding(case.label, centre, size), 0, axis=self.slice_axis)
        return image, label

    def make_batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch number ``index`` of the stream (a pure function of ``seed`` and ``index``)."""
        rng = np.random.default_rng([self.seed, int(index)])
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        spatial = self.augmentation.spatial
        n_forced = int(round(self.batch_size * self.oversample_foreground))
        channels = self.cases[0].image.shape[0] * (2 * self.context_slices + 1)
        # the batch is assembled in place: each patch is copied once from the memmap (or the warp output)
        images = np.empty((self.batch_size, channels) + self.patch_size, dtype=np.float32)
        # labels are written as int64 straight away (the cast rides on the copy: no separate .long() pass)
        # (np.empty, not np.zeros: calloc hands out fresh zero pages for large blocks, and faulting them in
        # cost more than the copy itself; every label patch is written below, or zeroed when there is none)
        labels = np.empty((self.batch_size,) + self.patch_size, dtype=np.int64)
        if not self._all_labelled:
            labels.fill(0)
        for b in range(self.batch_size):
            case = self.cases[int(rng.integers(len(self.cases)))]
            force = b >= self.batch_size - n_forced
            centre = self.sampler(case, self._sampler_patch(), rng, force)
            params = spatial.sample(generator) if spatial is not None else None
            if params is None or params.is_identity:
                flip = tuple(
                    slice(None, None, -1) if params is not None and a in params.flips else slice(None)
                    for a in range(self.spatial_dims)
                )
                self._crop(case, centre, self.patch_size, images[b][(slice(None),) + flip], labels[b][flip])
                continue
            image, label = self._crop(case, centre, params.region)
            img_t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
            lab_t = None if label is None else torch.from_numpy(np.ascontiguousarray(label))[None]
            img_t, lab_t = spatial.warp(img_t, lab_t, [params])
            images[b] = img_t[0].numpy()
            if lab_t is not None:
                labels[b] = lab_t[0].numpy()
        image_t = torch.from_numpy(images)
        label_t = torch.from_numpy(labels)
        transforms = self.augmentation.transforms
        image_t, label_t = transforms.apply_(image_t, label_t, generator)  # we own the batch: in place
        return image_t, label_t

    # ----------------------------------------------------------------------------------- iteration

    def __iter__(self) -> PatchLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.num_workers <= 0:
            batch = self.make_batch(self._next_index)
            self._next_index += 1
            return batch
        if self.worker_mode == "process":
            if self._dl_iter is None:
                dl = torch.utils.data.DataLoader(
                    _BatchDataset(self), batch_size=None, sampler=_Count(self._next_index),
                    num_workers=self.num_workers, prefetch_factor=self.prefetch, persistent_workers=True,
                    worker_init_fn=_worker_init,
                )
                self._dl_iter = iter(dl)
            batch = next(self._dl_iter)
            self._next_index += 1
            return batch
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="medzoo-patches",
                                            initializer=runtime.limit_worker_threads)
        while len(self._pending) < self.num_workers * self.prefetch:
            self._pending.append((self._next_index, self._pool.submit(self.make_batch, self._next_index)))
            self._next_index += 1
        return self._pending.popleft()[1].result()

    def close(self) -> None:
        """Stop the background workers (the loader can be iterated again afterwards, restarting them)."""
        if self._pool is not None:
            if self._pending:  # batches prepared but not consumed are made again on the next iteration
                self._next_index = self._pending[0][0]
            for _, f in self._pending:
                f.cancel()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self._pending.clear()
        if self._dl_iter is not None:
            shutdown = getattr(self._dl_iter, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            self._dl_iter = None

    def __enter__(self) -> PatchLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass
