"""The :class:`Plan`: everything fixed before training that prediction must repeat.

A plan is saved as ``plan.json`` in every run folder. The predictor rebuilds the network and the
preprocessing from it alone, so it holds the model name and arguments, the preprocessing (spacing,
cropping, normalisation and its statistics), the patch size and the label names.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from medzoo.errors import CheckpointError


@dataclass
class Plan:
    """Model + preprocessing + patch configuration of a run.

    Attributes:
        model: registry name of the network.
        in_channels: number of input channels the network takes (modalities x context slices).
        num_classes: classes including background.
        spatial_dims: 3 for volumetric networks, 2 for networks trained on slices of 3D data.
        model_kwargs: extra arguments for :func:`medzoo.create_model`.
        patch_size: training (and sliding-window) patch, one entry per spatial dim of the network.
        batch_size: training batch size.
        target_spacing: spacing (mm, per axis i, j, k) cases are resampled to; None keeps native spacing.
        crop_to_nonzero: crop cases to the bounding box of non-zero image voxels before training/predicting.
        normalization: intensity scheme name per channel (e.g. "zscore", "zscore_foreground", "ct").
        norm_stats: per-channel statistics needed by global schemes (e.g. CT mean/std/percentiles).
        labels: class index -> name, background included (index 0).
        modalities: names of the input channels, in order.
        label_mapping: raw label value -> class index, when the dataset's values are not 0..K-1.
        slice_axis: for spatial_dims == 2, the axis of the 3D volume that is sliced (0, 1 or 2).
        context_slices: for spatial_dims == 2, neighbouring slices on each side stacked as channels.
        extra: free-form (planner notes, fingerprint summary).
        regions: region-based training (one sigmoid output per region, ``num_classes`` = the number of
            regions): region name -> the class indices it unites, in output-channel order; None: softmax.
        regions_class_order: for region plans, the label value each region paints into a predicted label map,
            in painting order (later regions overwrite earlier ones, so nested regions go last).
        mirror_axes: axes of the network's input that training augmentation flips and test-time augmentation
            mirrors; None: every axis. The planner leaves out the left-right axis when labels come in left/right
            pairs, whose meaning a mirror image would swap.
    """

    model: str
    in_channels: int
    num_classes: int
    spatial_dims: int = 3
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    patch_size: tuple[int, ...] = (64, 64, 64)
    batch_size: int = 2
    target_spacing: tuple[float, ...] | None = None
    crop_to_nonzero: bool = False
    normalization: list[str] = field(default_factory=lambda: ["zscore"])
    norm_stats: list[dict[str, float]] = field(default_factory=list)
    labels: dict[int, str] = field(default_factory=lambda: {0: "background", 1: "foreground"})
    modalities: list[str] = field(default_factory=lambda: ["image"])
    label_mapping: dict[int, int] | None = None
    slice_axis: int = 2
    context_slices: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    regions: dict[str, list[int]] | None = None
    regions_class_order: list[int] | None = None
    mirror_axes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        self.patch_size = tuple(int(p) for p in self.patch_size)
        if self.mirror_axes is not None:
            self.mirror_axes = tuple(int(a) for a in self.mirror_axes)
        if self.target_spacing is not None:
            self.target_spacing = tuple(float(s) for s in self.target_spacing)
        self.labels = {int(k): str(v) for k, v in self.labels.items()}
        if self.label_mapping is not None:
            self.label_mapping = {int(k): int(v) for k, v in self.label_mapping.items()}

    @property
    def allowed_mirror_axes(self) -> tuple[int, ...]:
        """The axes of the network's input that may be mirrored (``mirror_axes``, or every axis)."""
        return tuple(range(self.spatial_dims)) if self.mirror_axes is None else self.mirror_axes

    @property
    def foreground_labels(self) -> dict[int, str]:
        """Class index -> name without the background."""
        return {k: v for k, v in self.labels.items() if k != 0}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (tuples become lists, int keys become strings)."""
        d = asdict(self)
        d["labels"] = {str(k): v for k, v in self.labels.items()}
        if self.label_mapping is not None:
            d["label_mapping"] = {str(k): v for k, v in self.label_mapping.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        """Inverse of :meth:`to_dict`; unknown keys are rejected."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise CheckpointError(f"plan has unknown keys {sorted(unknown)}")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        """Write the plan as JSON, atomically."""
        from medzoo.utils import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """Read a plan written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no plan file (is this a medzoo run folder?)")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError) as err:
            raise CheckpointError(f"{path}: not a valid plan ({err})") from err
