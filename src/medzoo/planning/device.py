"""What a training step costs on this machine: timed steps, cached per machine.

The budget-aware planner (:mod:`medzoo.planning.budgeting`) needs the time of one training step of a
candidate network at a candidate batch and patch. Each network is probed once: real training steps (forward,
loss, backward, optimizer) on zeros at a tiny and two small sizes give the points of a curve of seconds against
the voxels a step sees, with a line through the two small sizes for sizes beyond them (:class:`StepCost`).
The planner prices its candidates on that curve, then times a step of the plan it chose and adds it as a
point; when the two differ it plans again on the corrected curve. On the CPU a step counts its CPU time over
its threads when that is less than the wall time: a machine busy with other work would otherwise be cached
as a slow one.

The curves are kept in a JSON file under the user cache folder (``$XDG_CACHE_HOME/medzoo/planner`` or
``~/.cache/medzoo/planner``), keyed by a signature of the machine (CPU model and count, torch version and
threads, device, precision). The file is validated on read: a file that does not parse, belongs to another
machine or holds a non-positive or non-finite number is discarded with one warning and measured again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PROBE_VERSION = 3  # 3: points at batch 2 (2: a line, with the trainer's malloc tuning; 1: without it)
#: the two probe inputs (batch, patch): small enough to cost about a second in all on 2 CPU cores; batch 2 as
#: every plan has (on a CPU a batch of one can take longer than a batch of two: docs/benchmarks.md)
PROBE_SIZES = ((2, (32, 32, 32)), (2, (64, 64, 32)))
PROBE_SIZES_2D = ((2, (64, 64)), (8, (128, 128)))


@dataclass(frozen=True)
class StepCost:
    """What one training step of one network costs, in seconds, as a function of the voxels it sees
    (``batch * patch voxels``).

    ``points`` are steps timed on this machine, as (voxels, seconds). Between two of them the price is read off
    the straight line that joins them; below the first and above the last it follows the line
    ``overhead + per_voxel * voxels``, scaled to pass through the nearest point. A step on a CPU is far from
    proportional to its voxels (docs/planner.md), so one line through two probes misprices sizes far from
    them; the planner times each plan's own step and adds it as a point (:meth:`DeviceProfile.confirm`).
    """

    overhead: float
    per_voxel: float
    points: tuple[tuple[float, float], ...] = ()

    def seconds(self, batch: int, patch: tuple[int, ...]) -> float:
        return self.at(batch * math.prod(patch))

    def at(self, voxels: float) -> float:
        """Seconds of a step that sees ``voxels`` voxels in all."""
        curve = self.curve()
        if not curve:
            return self._line(voxels)
        (v_first, t_first), (v_last, t_last) = curve[0], curve[-1]
        if voxels <= v_first:
            return t_first * self._line(voxels) / self._line(v_first)
        if voxels >= v_last:
            return t_last * self._line(voxels) / self._line(v_last)
        for (va, ta), (vb, tb) in zip(curve, curve[1:]):
            if voxels <= vb:
                return ta + (tb - ta) * (voxels - va) / (vb - va)
        return t_last  # not reached: voxels < v_last

    def max_voxels(self, batch: int, step_seconds: float) -> float:
        """Largest patch (voxels) whose step at ``batch`` takes at most ``step_seconds``."""
        return self.voxels_within(step_seconds) / batch or 1.0

    def voxels_within(self, step_seconds: float) -> float:
        """The most voxels a step may see in ``step_seconds`` (the inverse of :meth:`at`)."""
        curve = self.curve()
        if not curve:
            return self._line_inverse(step_seconds)
        (v_first, t_first), (v_last, t_last) = curve[0], curve[-1]
        if step_seconds >= t_last:
            return self._line_inverse(step_seconds * self._line(v_last) / t_last)
        if step_seconds < t_first:
            return self._line_inverse(step_seconds * self._line(v_first) / t_first)
        for (va, ta), (vb, tb) in zip(curve, curve[1:]):
            if ta <= step_seconds < tb:
                return va + (vb - va) * (step_seconds - ta) / (tb - ta)
        return v_last  # not reached: the curve never falls

    def _line(self, voxels: float) -> float:
        return self.overhead + self.per_voxel * voxels

    def _line_inverse(self, seconds: float) -> float:
        return max(seconds - self.overhead, 0.0) / self.per_voxel

    def curve(self) -> list[tuple[float, float]]:
        """The points by voxels, each at least as slow as any smaller one (timing noise never makes a larger
        step cheaper)."""
        out: list[tuple[float, float]] = []
        for v, t in sorted(self.points):
            out.append((v, max(t, out[-1][1]) if out else t))
        return out

    def with_point(self, voxels: float, seconds: float) -> StepCost:
        """This cost with a newly timed step; it replaces any point within a quarter of its size."""
        kept = tuple(p for p in self.points if not 0.8 <= p[0] / voxels <= 1.25)
        return StepCost(self.overhead, self.per_voxel, tuple(sorted(kept + ((float(voxels), float(seconds)),))))

    def scaled(self, factor: float) -> StepCost:
        return StepCost(self.overhead * factor, self.per_voxel * factor,
                        tuple((v, t * factor) for v, t in self.points))


@dataclass
class DeviceProfile:
    """Measured step costs of the networks probed on one machine (``networks``: key -> :class:`StepCost`)."""

    signature: dict[str, Any]
    networks: dict[str, StepCost] = field(default_factory=dict)
    path: Path | None = None

    def cost(self, model: str, spatial_dims: int, model_kwargs: dict[str, Any], in_channels: int,
             num_classes: int) -> StepCost:
        """The step cost of a network, measured (and cached) on first use."""
        key = network_key(model, spatial_dims, model_kwargs, in_channels, num_classes)
        if key not in self.networks:
            self.networks[key] = measure_step_cost(model, spatial_dims, model_kwargs, in_channels, num_classes,
                                                   self.signature["device"])
            if self.path is not None:
                save_profile(self, self.path)
        return self.networks[key]

    def confirm(self, model: str, spatial_dims: int, model_kwargs: dict[str, Any], in_channels: int,
                num_classes: int, batch: int, patch: tuple[int, ...]) -> float:
        """Time a training step at ``batch`` x ``patch``, add it to the network's points (and the cache) and
        return its seconds: the planner prices its candidate plans from the probe, then checks the one it
        chose."""
        key = network_key(model, spatial_dims, model_kwargs, in_channels, num_classes)
        cost = self.cost(model, spatial_dims, model_kwargs, in_channels, num_classes)
        seconds = measure_step(model, spatial_dims, model_kwargs, in_channels, num_classes, batch, patch,
                               self.signature["device"])
        self.networks[key] = cost.with_point(batch * math.prod(patch), seconds)
        if self.path is not None:
            save_profile(self, self.path)
        return seconds


def network_key(model: str, spatial_dims: int, model_kwargs: dict[str, Any], in_channels: int = 1,
                num_classes: int = 2) -> str:
    """A stable name of one network configuration (what the probe times). The input and output channels only
    change the first and last convolutions, so one probe serves every dataset."""
    kw = json.dumps(model_kwargs, sort_keys=True, default=str)
    return f"{model}/{spatial_dims}d/{kw}"


def machine_signature(device: str = "cpu") -> dict[str, Any]:
    """What makes a step cost differ between machines: CPU model, cores, torch version and threads, device."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from medzoo import runtime

    dtype = runtime.autocast_dtype("auto", device)
    sig: dict[str, Any] = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch": torch.__version__,
                           "threads": torch.get_num_threads(), "device": device,
                           "precision": "fp32" if dtype is None else str(dtype).removeprefix("torch.")}
    if device.startswith("cuda") and torch.cuda.is_available():
        sig["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return sig


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/medzoo/planner``, else ``~/.cache/medzoo/planner`` (:func:`medzoo.runtime.user_cache_dir`)."""
    from medzoo import runtime

    return runtime.user_cache_dir("planner")


def profile_path(signature: dict[str, Any], cache_dir: Path | None = None) -> Path:
    digest = hashlib.sha1(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:16]
    return (cache_dir or default_cache_dir()) / f"device-{digest}.json"


def _valid_cost(entry: Any) -> StepCost | None:
    if not isinstance(entry, dict):
        return None
    try:
        overhead, per_voxel = float(entry["overhead"]), float(entry["per_voxel"])
    except (KeyError, TypeError, ValueError):
        return None
    if not (math.isfinite(overhead) and math.isfinite(per_voxel)) or overhead < 0 or per_voxel <= 0:
        return None
    try:
        points = tuple((float(v), float(t)) for v, t in entry.get("points", []))
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) and math.isfinite(t) and v > 0 and t > 0 for v, t in points):
        return None
    return StepCost(overhead, per_voxel, points)


def load_profile(path: Path, signature: dict[str, Any]) -> DeviceProfile | None:
    """The cached profile at ``path`` when it is valid for ``signature``; None when absent. An invalid file
    (unreadable, another version or machine, a bad number) is discarded with one warning."""
    if not path.is_file():
        return None
    problem = None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("version") != PROBE_VERSION:
            problem = "another format version"
        elif data.get("signature") != signature:
            problem = "measured on another machine or setup"
        else:
            networks = {}
            for key, entry in (data.get("networks") or {}).items():
                cost = _valid_cost(entry)
                if cost is None:
                    problem = f"a bad entry for {key}"
                    break
                networks[key] = cost
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        problem = f"unreadable ({err})"
    if problem:
        log.warning("%s: discarding the cached step-time probe (%s); measuring again", path, problem)
        try:
            path.unlink()
        except OSError:
            pass
        return None
    return DeviceProfile(signature, networks, path)


def save_profile(profile: DeviceProfile, path: Path) -> None:
    """Write the profile atomically (a read-only cache folder only costs a re-measurement next time)."""
    from medzoo.utils import atomic_write_text

    data = {"version": PROBE_VERSION, "signature": profile.signature,
            "networks": {k: {"overhead": c.overhead, "per_voxel": c.per_voxel, "points": [list(p) for p in c.points]}
                         for k, c in profile.networks.items()}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(data, indent=2))
    except OSError as err:
        log.warning("could not cache the step-time probe in %s (%s); it will be measured again next time",
                    path, err)


def device_profile(device: str = "cpu", cache_dir: Path | None = None) -> DeviceProfile:
    """This machine's profile: from the cache when valid, else empty (networks are measured on first use)."""
    signature = machine_signature(device)
    path = profile_path(signature, cache_dir)
    return load_profile(path, signature) or DeviceProfile(signature, {}, path)


#: a trained step within this factor of its price leaves the cached price as it is
PRICE_TOLERANCE = 1.5


def correct_step_price(key: str, expected: float, measured: float, device: str = "cpu",
                       cache_dir: Path | None = None) -> float | None:
    """Move the cached price of network ``key`` towards what a training run measured.

    A probe taken while the machine was busy (or a machine whose steps the probe misjudges) would otherwise
    misprice every later plan. When ``measured`` seconds per step differ from the ``expected`` ones by more
    than :data:`PRICE_TOLERANCE`, both numbers of the cached line are scaled by the square root of the ratio:
    one run moves the price half-way (on a log scale), so a single run on a loaded machine cannot undo a good
    probe, while a persistent error is corrected within a few runs. Returns the factor applied, or None.
    """
    ratio = measured / expected if expected > 0 else float("nan")
    if not math.isfinite(ratio) or ratio <= 0 or 1 / PRICE_TOLERANCE <= ratio <= PRICE_TOLERANCE:
        return None
    profile = device_profile(device, cache_dir)
    cost = profile.networks.get(key)
    if cost is None:
        return None
    factor = math.sqrt(ratio)
    profile.networks[key] = cost.scaled(factor)
    if profile.path is not None:
        save_profile(profile, profile.path)
    log.info("the planner priced a training step at %.2fs, the run measured %.2fs: the cached step price of "
             "this network is scaled by %.2f for the next plan", expected, measured, factor)
    return factor


class _StepTimer:
    """Times real training steps (forward, loss, backward, optimizer) of one network on zeros, in the
    precision and memory layout ``medzoo train`` picks by default on this device (:mod:`medzoo.runtime`)."""

    def __init__(self, model: str, spatial_dims: int, model_kwargs: dict[str, Any], in_channels: int,
                 num_classes: int, device: str) -> None:
        import torch

        from medzoo import runtime
        from medzoo.models.registry import create_model, prefers_channels_last

        self.dev = torch.device(device)
        # the trainer reuses freed activations (runtime.tune_malloc); without it a step page-faults its
        # activations back in and the probe would price a step well above what training then takes
        runtime.tune_malloc()
        net = create_model(model, in_channels=in_channels, num_classes=num_classes, spatial_dims=spatial_dims,
                           **model_kwargs).to(self.dev)
        self.dtype = runtime.autocast_dtype("auto", self.dev)
        self.layout = runtime.preferred_memory_format("auto", spatial_dims, self.dev, prefers_channels_last(model))
        if self.layout is not None:
            net = net.to(memory_format=self.layout)
        net.train()
        self.net, self.in_channels = net, in_channels
        self.opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        # the smallest patch the network takes with more than one voxel left at its coarsest level
        # (normalisation needs two): 16 for unet3d, 32 for unet2d's four poolings
        divisor = int(getattr(net, "size_divisor", 1) or 1)
        self.tiny = tuple(max(16, 2 * divisor) for _ in range(spatial_dims))

    def __call__(self, batch: int, patch: tuple[int, ...]) -> float:
        import torch
        import torch.nn.functional as F

        dev = self.dev
        x = torch.zeros(batch, self.in_channels, *patch, device=dev)
        if self.layout is not None:
            x = x.to(memory_format=self.layout)
        y = torch.zeros(batch, *patch, dtype=torch.long, device=dev)
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.autocast(dev.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            out = self.net(x)
        outs = out if isinstance(out, (list, tuple)) else [out]
        loss = sum(F.cross_entropy(o.float(), F.interpolate(y[:, None].float(), size=o.shape[2:],
                                                            mode="nearest")[:, 0].long()) for o in outs)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        # on a machine other processes keep busy the step waits for cores; its CPU time spread over this
        # process's threads is what it costs the machine (the cache keeps the machine's figure, not the load's)
        return min(wall, cpu / max(torch.get_num_threads(), 1)) if dev.type == "cpu" else wall


def measure_step_cost(model: str, spatial_dims: int, model_kwargs: dict[str, Any], in_channels: int,
                      num_classes: int, device: str = "cpu", max_seconds: float = 10.0) -> StepCost:
    """Time training steps of the network at a tiny size and the two probe sizes: the points of its cost, and
    the line through the probe sizes that prices sizes beyond them.

    A network whose first step at the small size takes more than a quarter of ``max_seconds`` is priced from
    that one step (half of it fixed), so a slow network never holds the probe for long.
    """
    step = _StepTimer(model, spatial_dims, model_kwargs, in_channels, num_classes, device)
    tiny = step.tiny
    step(2, tiny)  # warm-up (first-use costs), not timed
    points = []
    for batch, patch in PROBE_SIZES if spatial_dims == 3 else PROBE_SIZES_2D:
        best = step(batch, patch)
        if best > max_seconds / 4:  # a slow network: price it from this step, half of it fixed
            log.info("step-time probe of %s: one step took %.1fs; priced from it alone", model, best)
            voxels = batch * math.prod(patch)
            return StepCost(0.5 * best, 0.5 * best / voxels, ((float(voxels), best),))
        for _ in range(2 if best < 1.0 else 1):
            best = min(best, step(batch, patch))  # the quickest counts (a busy machine only slows)
        points.append((float(batch * math.prod(patch)), best))
    (v0, t0_), (v1, t1) = points
    # timing noise can make the slope tiny, negative or steep: keep at least half of each step per voxel
    per_voxel = min(max((t1 - t0_) / (v1 - v0), t1 / v1 * 0.5, 1e-12), t0_ / v0)
    overhead = min(max(t0_ - per_voxel * v0, 0.0), 0.5 * t0_)
    # the fixed part can be no more than a whole step of a tiny patch: without this bound a line through two
    # mid-size points over-prices the small patches a short budget plans for
    tiny_seconds = min(step(2, tiny), step(2, tiny))
    overhead = min(overhead, tiny_seconds)
    points.insert(0, (float(2 * math.prod(tiny)), tiny_seconds))
    log.info("step-time probe of %s: %s", model,
             ", ".join(f"{v:.0f} voxels {t * 1e3:.0f} ms" for v, t in points))
    return StepCost(overhead, per_voxel, tuple(points))


def measure_step(model: str, spatial_dims: int, model_kwargs: dict[str, Any], in_channels: int, num_classes: int,
                 batch: int, patch: tuple[int, ...], device: str = "cpu") -> float:
    """Seconds of one training step at ``batch`` x ``patch``: the quicker of two after a warm-up step of that
    size (the first step of a size page-faults its activations in); one timed step when it takes over a
    second."""
    step = _StepTimer(model, spatial_dims, model_kwargs, in_channels, num_classes, device)
    step(batch, patch)
    best = step(batch, patch)
    return best if best > 1.0 else min(best, step(batch, patch))
