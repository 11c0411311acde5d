"""What a training step costs on this machine: a quick measured probe, cached per machine.

The budget-aware planner (:mod:`medzoo.planning.budgeting`) needs the time of one training step of a
candidate network at a candidate batch and patch. It models it as

    step_seconds = overhead + per_voxel * batch * patch_voxels

and measures both numbers per network by timing real training steps (forward, loss, backward, optimizer) on
zeros at two small sizes (on the CPU, the step's CPU time over its threads when that is less than the wall
time: a machine busy with other work would otherwise be cached as a slow one). The line through the two points is kept in a JSON file under the user cache folder
(``$XDG_CACHE_HOME/medzoo/planner`` or ``~/.cache/medzoo/planner``), keyed by a signature of the machine
(CPU model and count, torch version and threads, device, precision). The file is validated on read: a file
that does not parse, belongs to another machine or holds a non-positive or non-finite number is discarded
with one warning and measured again.
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

PROBE_VERSION = 2  # 2: steps timed with the trainer's malloc tuning (version 1 priced them without it)
#: the two probe inputs (batch, patch): small enough to cost about a second in all on 2 CPU cores
PROBE_SIZES = ((1, (32, 32, 32)), (2, (64, 64, 32)))
PROBE_SIZES_2D = ((2, (64, 64)), (8, (128, 128)))


@dataclass(frozen=True)
class StepCost:
    """Linear cost of one training step of one network: ``overhead + per_voxel * batch * voxels`` seconds."""

    overhead: float
    per_voxel: float

    def seconds(self, batch: int, patch: tuple[int, ...]) -> float:
        return self.overhead + self.per_voxel * batch * math.prod(patch)

    def max_voxels(self, batch: int, step_seconds: float) -> float:
        """Largest patch (voxels) whose step at ``batch`` takes at most ``step_seconds``."""
        return max(step_seconds - self.overhead, 0.0) / (self.per_voxel * batch) or 1.0


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

    def describe(self, key: str) -> str:
        c = self.networks[key]
        return f"{c.overhead * 1e3:.0f} ms + {c.per_voxel * 1e9:.1f} ns per voxel"


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
    return StepCost(overhead, per_voxel)


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
            "networks": {k: {"overhead": c.overhead, "per_voxel": c.per_voxel} for k, c in profile.networks.items()}}
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
    profile.networks[key] = StepCost(cost.overhead * factor, cost.per_voxel * factor)
    if profile.path is not None:
        save_profile(profile, profile.path)
    log.info("the planner priced a training step at %.2fs, the run measured %.2fs: the cached step price of "
             "this network is scaled by %.2f for the next plan", expected, measured, factor)
    return factor


def measure_step_cost(model: str, spatial_dims: int, model_kwargs: dict[str, Any], in_channels: int,
                      num_classes: int, device: str = "cpu", max_seconds: float = 10.0) -> StepCost:
    """Time training steps of the network at the two probe sizes and fit the line through them.

    A network whose first step at the small size takes more than a quarter of ``max_seconds`` is priced from
    that one step (half of it fixed), so a slow network never holds the probe for long. The steps run in the
    precision and memory layout ``medzoo train`` picks by default on this device (:mod:`medzoo.runtime`).
    """
    import torch

    from medzoo import runtime
    from medzoo.models.registry import create_model, prefers_channels_last

    dev = torch.device(device)
    # the trainer reuses freed activations (runtime.tune_malloc); without it a step page-faults its
    # activations back in and the probe would price a step well above what training then takes
    runtime.tune_malloc()
    net = create_model(model, in_channels=in_channels, num_classes=num_classes, spatial_dims=spatial_dims,
                       **model_kwargs).to(dev)
    # priced as `medzoo train` runs by default (amp and memory format "auto")
    dtype = runtime.autocast_dtype("auto", dev)
    layout = runtime.preferred_memory_format("auto", spatial_dims, dev, prefers_channels_last(model))
    if layout is not None:
        net = net.to(memory_format=layout)
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)

    def step(batch: int, patch: tuple[int, ...]) -> float:
        x = torch.zeros(batch, in_channels, *patch, device=dev)
        if layout is not None:
            x = x.to(memory_format=layout)
        y = torch.zeros(batch, *patch, dtype=torch.long, device=dev)
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = net(x)
        outs = out if isinstance(out, (list, tuple)) else [out]
        loss = sum(torch.nn.functional.cross_entropy(o.float(), torch.nn.functional.interpolate(
            y[:, None].float(), size=o.shape[2:], mode="nearest")[:, 0].long()) for o in outs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        # on a machine other processes keep busy the step waits for cores; its CPU time spread over this
        # process's threads is what it costs the machine (the cache keeps the machine's figure, not the load's)
        return min(wall, cpu / max(torch.get_num_threads(), 1)) if dev.type == "cpu" else wall

    sizes = PROBE_SIZES if spatial_dims == 3 else PROBE_SIZES_2D
    tiny = tuple(16 for _ in range(spatial_dims))
    step(1, tiny)  # warm-up (first-use costs), not timed
    points = []
    for batch, patch in sizes:
        best = step(batch, patch)
        if best > max_seconds / 4:  # a slow network: price it from this step, half of it fixed
            log.info("step-time probe of %s: one step took %.1fs; priced from it alone", model, best)
            return StepCost(0.5 * best, 0.5 * best / (batch * math.prod(patch)))
        for _ in range(2 if best < 1.0 else 1):
            best = min(best, step(batch, patch))  # the quickest counts (a busy machine only slows)
        points.append((batch * math.prod(patch), best))
    (v0, t0_), (v1, t1) = points
    # timing noise can make the slope tiny, negative or steep: keep at least half of each step per voxel
    per_voxel = min(max((t1 - t0_) / (v1 - v0), t1 / v1 * 0.5, 1e-12), t0_ / v0)
    overhead = min(max(t0_ - per_voxel * v0, 0.0), 0.5 * t0_)
    # the fixed part can be no more than a whole step of a tiny patch: without this bound a line through two
    # mid-size points over-prices the small patches a short budget plans for
    overhead = min(overhead, min(step(1, tiny), step(1, tiny)))
    log.info("step-time probe of %s: %.0f ms + %.1f ns per voxel", model, overhead * 1e3, per_voxel * 1e9)
    return StepCost(overhead, per_voxel)
