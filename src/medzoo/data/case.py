"""Cases and dataset descriptions: what a layout finds in a folder.

A layout (see :mod:`medzoo.data.layouts`) turns a dataset root into a :class:`DatasetInfo`: its cases
(image files per modality, optional label file), the class names and, where the raw label values are not
0..K-1, the mapping to contiguous class indices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Case:
    """One subject: its image file(s) and optional label file.

    Attributes:
        case_id: unique name within the dataset (e.g. ``hippocampus_001``).
        image_paths: one file per modality in channel order, or a single 4D file holding all channels.
        label_path: the label map, or None for unlabelled (test) cases.
        meta: layout-specific extras (e.g. a classification target read from a CSV).
    """

    case_id: str
    image_paths: list[Path]
    label_path: Path | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class DatasetInfo:
    """A dataset as a layout found it.

    Attributes:
        root: the folder the user gave.
        layout: the layout name that read it (``msd``, ``nnunet``, ``brats``, ...).
        cases: labelled training cases, sorted by case_id.
        labels: class index -> name, background (0) included.
        modalities: channel names in order.
        label_mapping: raw label value -> class index, or None when values already are 0..K-1.
        test_cases: unlabelled cases the layout lists (e.g. MSD ``imagesTs``).
        regions: optional region view (e.g. BraTS ``{"WT": [1, 2, 3], ...}``) over class indices.
        name: dataset name for display.
        ignore_label: the raw label value of unannotated voxels (sparse annotation), or None; it is mapped to
            :data:`medzoo.utils.IGNORE_INDEX` by ``label_mapping`` and is not one of ``labels``.
        regions_class_order: the raw label value each region paints, in painting order (nnU-Net v2's
            ``regions_class_order``), when the dataset declares one.
    """

    root: Path
    layout: str
    cases: list[Case]
    labels: dict[int, str]
    modalities: list[str]
    label_mapping: dict[int, int] | None = None
    test_cases: list[Case] = field(default_factory=list)
    regions: dict[str, list[int]] | None = None
    name: str = ""
    ignore_label: int | None = None
    regions_class_order: list[int] | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes including background."""
        return len(self.labels)

    @property
    def num_channels(self) -> int:
        """Number of input channels (modalities)."""
        return len(self.modalities)
