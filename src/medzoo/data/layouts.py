"""Dataset layouts: each names the cases of a folder (modalities as channels, plus the label).

A layout is a pair of functions registered under a name: ``detect(root) -> bool`` says whether a folder
looks like that layout, and ``load(root, **options) -> DatasetInfo`` lists its cases. Layouts never read
voxel data (except ``folder``/``csv`` when the label values are not given) and never hard-code a path or a
volume size.

Built-in layouts:

- ``msd``: Medical Segmentation Decathlon (``dataset.json`` with ``modality`` and ``training``; 4D images).
- ``nnunet``: nnU-Net v2 raw (``imagesTr/{case}_{XXXX}{ext}``, ``labelsTr``, ``dataset.json`` with
  ``channel_names``, ``labels``, ``file_ending``).
- ``brats``: BraTS 2018-2021 (a folder per case with ``*_t1``, ``*_t1ce``, ``*_t2``, ``*_flair``, ``*_seg``).
- ``iseg``: iSeg 2017/2019 (``subject-N-T1.hdr``, ``subject-N-T2.hdr``, ``subject-N-label.hdr``, Analyze).
- ``mrbrains``: MRBrainS 2018 (a folder per subject with ``pre/reg_T1.nii.gz``, ``pre/reg_IR.nii.gz``,
  ``pre/FLAIR.nii.gz`` and ``segm.nii.gz``).
- ``mrbrains2013``: MRBrainS 2013 (a folder per subject with ``T1``, ``T1_IR``, ``T2_FLAIR`` and
  ``LabelsForTesting`` / ``LabelsForTraining``, as ``.nii``, ``.nii.gz`` or ``.mhd``).
- ``folder``: glob patterns per modality and for the label (options, or a ``medzoo_layout.json`` file at the
  root; never auto-detected from file names).
- ``csv``: a CSV file with a column per modality plus ``label`` (paths relative to the CSV).

Case ids are sorted in natural order (``case_2`` before ``case_10``), so the order never depends on the
file system.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medzoo.data.case import Case, DatasetInfo
from medzoo.errors import DataError
from medzoo.utils import IGNORE_INDEX

log = logging.getLogger(__name__)

_NII_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".hdr")


@dataclass(frozen=True)
class Layout:
    """A registered layout: its name, a detector and a loader."""

    name: str
    detect: Callable[[Path], bool]
    load: Callable[..., DatasetInfo]
    auto: bool = True


_LAYOUTS: dict[str, Layout] = {}


def register_layout(name: str, detect: Callable[[Path], bool] | None = None, auto: bool = True):
    """Decorator registering ``load(root, **options) -> DatasetInfo`` under ``name``.

    Args:
        name: the layout name users pass as ``layout=``.
        detect: ``detect(root) -> bool`` for auto-detection (None: never auto-detected).
        auto: whether auto-detection considers this layout.
    """

    def wrap(load: Callable[..., DatasetInfo]) -> Callable[..., DatasetInfo]:
        _LAYOUTS[name] = Layout(name, detect or (lambda root: False), load, auto and detect is not None)
        return load

    return wrap


def list_layouts() -> list[str]:
    """Names of the registered layouts."""
    return sorted(_LAYOUTS)


def natural_key(text: str) -> list[Any]:
    """Sort key that orders embedded numbers numerically (``a2`` < ``a10``)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def detect_layout(root: str | Path) -> str:
    """The single layout matching ``root``.

    Raises:
        DataError: when no layout or several layouts match (the message lists them).
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: dataset folder does not exist")
    found = [name for name, lay in sorted(_LAYOUTS.items()) if lay.auto and _safe_detect(lay, root)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(
            f"{root}: cannot tell the dataset layout (none of {', '.join(list_layouts())} matches); "
            "pass layout=NAME (the 'folder' layout takes glob patterns)"
        )
    raise DataError(f"{root}: the dataset layout is ambiguous (candidates: {', '.join(found)}); pass layout=NAME")


def _safe_detect(layout: Layout, root: Path) -> bool:
    try:
        return bool(layout.detect(root))
    except (OSError, ValueError, json.JSONDecodeError):
        return False


def load_dataset(root: str | Path, layout: str | None = None, **options: Any) -> DatasetInfo:
    """Find the cases of a dataset folder.

    Args:
        root: dataset folder (or, for the ``csv`` layout, the CSV file).
        layout: layout name (see :func:`list_layouts`); None auto-detects it.
        **options: layout-specific options (e.g. ``classes=4`` for ``mrbrains``, glob patterns for
            ``folder``). A ``medzoo_layout.json`` file at the root may hold ``"layout"`` and default options
            (used when ``layout`` is None or names the same layout; explicit options win). Every layout also
            takes ``ignore_label=V``: voxels of raw value ``V`` are unannotated (see :func:`with_ignore_label`),
            and ``regions={"WT": [1, 2, 4], ...}`` with ``regions_class_order=[2, 1, 4]`` (raw label values):
            the dataset's region view, for region-based training (see :func:`with_regions`).

    Returns:
        The :class:`DatasetInfo` with cases sorted by id.

    Raises:
        DataError: unknown or ambiguous layout, missing files, malformed dataset.json.
    """
    root = Path(root).expanduser()
    saved = _options_file(root)
    if saved:
        saved_layout = saved.pop("layout", None)
        if layout is None or layout == saved_layout:
            layout = saved_layout
            options = {**saved, **options}  # explicit options win over the file's
    if layout is None:
        layout = "folder" if "images" in options else detect_layout(root)
    if layout not in _LAYOUTS:
        raise DataError(f"unknown dataset layout '{layout}' (known: {', '.join(list_layouts())})")
    if not root.exists():
        raise DataError(f"{root}: dataset folder does not exist")
    ignore = options.pop("ignore_label", None)
    regions, order = options.pop("regions", None), options.pop("regions_class_order", None)
    info = _LAYOUTS[layout].load(root, **options)
    if ignore is not None:
        info = with_ignore_label(info, int(ignore))
    if regions is not None:
        info = with_regions(info, regions, order)
    if not info.cases and not info.test_cases:
        raise DataError(f"{root}: the {layout} layout found no cases")
    ids = [c.case_id for c in info.cases + info.test_cases]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise DataError(f"{root}: duplicate case ids {dupes[:5]}")
    log.info("%s: %d training and %d test cases (%s layout)", root, len(info.cases), len(info.test_cases), layout)
    return info


def with_ignore_label(info: DatasetInfo, value: int) -> DatasetInfo:
    """The dataset with raw label ``value`` marking unannotated voxels (sparse annotation, as nnU-Net's ignore).

    The value leaves the classes (the classes above it move down one index, region definitions follow) and
    ``label_mapping`` sends it to :data:`medzoo.utils.IGNORE_INDEX`. A value no label file declares is fine.

    Raises:
        DataError: ``value`` is the background's value.
    """
    mapping = dict(info.label_mapping or {k: k for k in info.labels})
    gone = mapping.pop(value, None)
    if gone == 0:
        raise DataError(f"{info.root}: the ignore label {value} is the background's value; pick another")
    labels = dict(info.labels)
    if gone is not None and gone != IGNORE_INDEX:
        labels.pop(gone)
        shift = {c: c - (c > gone) for c in info.labels if c != gone}
        labels = {shift[c]: n for c, n in labels.items()}
        mapping = {raw: shift[c] for raw, c in mapping.items()}
        if info.regions:
            info.regions = {k: [shift[c] for c in cs if c != gone] for k, cs in info.regions.items()}
    mapping[value] = IGNORE_INDEX
    info.labels, info.label_mapping, info.ignore_label = dict(sorted(labels.items())), mapping, value
    return info


def with_regions(info: DatasetInfo, regions: dict, order: list | None) -> DatasetInfo:
    """The dataset with a region view given in raw label values (e.g. BraTS 2013's WT/TC/ET).

    Args:
        info: the dataset.
        regions: region name -> the raw label values it unites, in output order.
        order: the raw label value each region paints into a predicted label map (nnU-Net's
            ``regions_class_order``); required.

    Raises:
        DataError: a value the dataset does not declare, or no (or a wrongly sized) ``regions_class_order``.
    """
    mapping = info.label_mapping or {k: k for k in info.labels}
    if not isinstance(regions, dict) or not regions:
        raise DataError(f"{info.root}: regions must map a name to a list of label values, got {regions!r}")
    if order is None or len(order) != len(regions):
        raise DataError(
            f"{info.root}: regions need regions_class_order, the label value each of the {len(regions)} regions "
            "paints in a prediction (e.g. regions_class_order=[2, 1, 4] for BraTS WT, TC, ET)"
        )
    converted = {}
    for name, values in regions.items():
        unknown = [v for v in values if int(v) not in mapping or mapping[int(v)] == IGNORE_INDEX]
        if unknown:
            raise DataError(f"{info.root}: region {name} names label values {unknown} the dataset does not declare")
        converted[str(name)] = [mapping[int(v)] for v in values]
    info.regions, info.regions_class_order = converted, [int(v) for v in order]
    return info


#: Optional file at a dataset root giving its layout and layout options, e.g. for the ``folder`` layout
#: ``{"layout": "folder", "images": {"t1": "{case}/t1.nii.gz"}, "label": "{case}/seg.nii.gz"}``, so
#: ``--layout NAME`` (or auto-detection) works from the command line without passing the patterns.
OPTIONS_FILE = "medzoo_layout.json"


def _options_file(root: Path) -> dict:
    """The layout options saved in ``root/medzoo_layout.json`` (empty when there is none)."""
    path = root / OPTIONS_FILE
    if not root.is_dir() or not path.is_file():
        return {}
    d = _read_json(path)
    if not isinstance(d, dict):
        raise DataError(f"{path}: must hold a JSON object (layout name and options)")
    log.info("%s: layout options from %s", root, path.name)
    return d


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from err


def _strip_suffix(name: str) -> str:
    for s in _NII_SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return Path(name).stem


def _int_labels(raw: dict, where: Path) -> dict[int, str]:
    try:
        labels = {int(k): str(v) for k, v in raw.items()}
    except (TypeError, ValueError) as err:
        raise DataError(f"{where}: 'labels' must map integer values to names ({err})") from err
    return dict(sorted(labels.items()))


def _contiguous(labels: dict[int, str]) -> tuple[dict[int, str], dict[int, int] | None]:
    """Class names indexed 0..K-1 and the raw -> class mapping (None when already contiguous)."""
    values = sorted(labels)
    if values == list(range(len(values))):
        return labels, None
    mapping = {v: i for i, v in enumerate(values)}
    return {mapping[v]: labels[v] for v in values}, mapping


def _sorted_cases(cases: list[Case]) -> list[Case]:
    return sorted(cases, key=lambda c: natural_key(c.case_id))


# --------------------------------------------------------------------------------------------- msd


def _detect_msd(root: Path) -> bool:
    f = root / "dataset.json"
    if not f.is_file():
        return False
    d = json.loads(f.read_text())
    return "training" in d and "modality" in d


@register_layout("msd", _detect_msd)
def _load_msd(root: Path) -> DatasetInfo:
    """Medical Segmentation Decathlon: ``dataset.json`` lists ``training`` image/label pairs (4D images)."""
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise DataError(f"{root}: no dataset.json (required by the msd layout)")
    d = _read_json(meta_path)
    for key in ("modality", "labels", "training"):
        if key not in d:
            raise DataError(f"{meta_path}: missing '{key}'")
    modalities = [str(v) for _, v in sorted(d["modality"].items(), key=lambda kv: int(kv[0]))]
    labels, mapping = _contiguous(_int_labels(d["labels"], meta_path))
    cases = []
    for entry in d["training"]:
        image = (root / entry["image"]).resolve()
        label = (root / entry["label"]).resolve()
        cases.append(Case(_strip_suffix(image.name), [image], label))
    tests = []
    for entry in d.get("test", []):
        image = (root / (entry["image"] if isinstance(entry, dict) else entry)).resolve()
        tests.append(Case(_strip_suffix(image.name), [image], None))
    return DatasetInfo(
        root=root, layout="msd", cases=_sorted_cases(cases), labels=labels, modalities=modalities,
        label_mapping=mapping, test_cases=_sorted_cases(tests), name=str(d.get("name", root.name)),
    )


# ------------------------------------------------------------------------------------------ nnunet


def _detect_nnunet(root: Path) -> bool:
    f = root / "dataset.json"
    if not f.is_file():
        return False
    d = json.loads(f.read_text())
    return "channel_names" in d and "file_ending" in d


def _nnunet_cases(folder: Path, ending: str, n_channels: int, label_folder: Path | None) -> list[Case]:
    pattern = re.compile(r"^(.*)_(\d{4})" + re.escape(ending) + "$")
    found: dict[str, dict[int, Path]] = {}
    for f in folder.iterdir() if folder.is_dir() else []:
        m = pattern.match(f.name)
        if m:
            found.setdefault(m.group(1), {})[int(m.group(2))] = f.resolve()
    cases = []
    for cid, chans in found.items():
        missing = [i for i in range(n_channels) if i not in chans]
        if missing:
            raise DataError(
                f"case {cid}: missing channel file(s) "
                + ", ".join(f"{cid}_{i:04d}{ending}" for i in missing)
                + f" in {folder}"
            )
        label = None
        if label_folder is not None:
            label = (label_folder / f"{cid}{ending}").resolve()
            if not label.is_file():
                raise DataError(f"case {cid}: no label file {label}")
        cases.append(Case(cid, [chans[i] for i in range(n_channels)], label))
    return _sorted_cases(cases)


@register_layout("nnunet", _detect_nnunet)
def _load_nnunet(root: Path) -> DatasetInfo:
    """nnU-Net v2 raw dataset: ``imagesTr/{case}_{XXXX}{ext}``, ``labelsTr/{case}{ext}``."""
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise DataError(f"{root}: no dataset.json (required by the nnunet layout)")
    d = _read_json(meta_path)
    for key in ("channel_names", "labels", "file_ending"):
        if key not in d:
            raise DataError(f"{meta_path}: missing '{key}'")
    modalities = [str(v) for _, v in sorted(d["channel_names"].items(), key=lambda kv: int(kv[0]))]
    ending = str(d["file_ending"])
    raw: dict[int, str] = {}
    regions: dict[str, list[int]] = {}
    ignore = None
    region_based = any(isinstance(v, list) for v in d["labels"].values())
    for name, value in d["labels"].items():
        if str(name) == "ignore":  # nnU-Net v2's sparse annotation: this value marks unannotated voxels
            ignore = int(value)
            continue
        values = [int(v) for v in value] if isinstance(value, list) else [int(value)]
        if len(values) == 1:
            raw[values[0]] = str(name)
        # region-based dataset: every entry but the background is a region, a union of label values
        if region_based and values != [0]:
            regions[str(name)] = values
    for value in sorted({v for vs in regions.values() for v in vs} - set(raw)):
        raw[value] = f"label_{value}"  # a value only named through the regions holding it
    labels, mapping = _contiguous(dict(sorted(raw.items())))
    if regions and mapping:
        regions = {k: [mapping[v] for v in vs if v in mapping] for k, vs in regions.items()}
    cases = _nnunet_cases(root / "imagesTr", ending, len(modalities), root / "labelsTr")
    tests = _nnunet_cases(root / "imagesTs", ending, len(modalities), None)
    order = d.get("regions_class_order")
    info = DatasetInfo(
        root=root, layout="nnunet", cases=cases, labels=labels, modalities=modalities,
        label_mapping=mapping, test_cases=tests, regions=regions or None, name=str(d.get("name", root.name)),
        regions_class_order=[int(v) for v in order] if regions and order else None,
    )
    return info if ignore is None else with_ignore_label(info, ignore)


# ------------------------------------------------------------------------------------------- brats

BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")
BRATS_LABELS = {0: "background", 1: "necrotic_tumor_core", 2: "peritumoral_edema", 3: "enhancing_tumor"}
BRATS_REGIONS = {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]}
#: The raw label value each region paints, in order: WT -> edema (2), TC -> necrosis (1), ET -> enhancing (4).
BRATS_REGIONS_CLASS_ORDER = (2, 1, 4)


def _brats_file(folder: Path, suffix: str) -> Path | None:
    for ext in (".nii.gz", ".nii"):
        hits = sorted(folder.glob(f"*_{suffix}{ext}"))
        if hits:
            return hits[0]
    return None


def _detect_brats(root: Path) -> bool:
    return any(True for _ in root.glob("*_flair.nii*")) or any(True for _ in root.glob("**/*_flair.nii*"))


@register_layout("brats", _detect_brats)
def _load_brats(root: Path) -> DatasetInfo:
    """BraTS 2018-2021: one folder per case (possibly under HGG/LGG); labels 0/1/2/4 -> 0/1/2/3.

    Folders without a ``*_seg`` file (validation data) become test cases. The WT/TC/ET region view over
    the contiguous classes is in ``DatasetInfo.regions``.
    """
    # a case folder is any folder holding one of the five files, so a missing modality is an error, not a
    # silently dropped case
    hits = [p for kind in (*BRATS_MODALITIES, "seg") for p in root.glob(f"**/*_{kind}.nii*")]
    folders = sorted({p.parent for p in hits}, key=lambda p: natural_key(p.name))
    cases, tests = [], []
    for folder in folders:
        paths = []
        for mod in BRATS_MODALITIES:
            p = _brats_file(folder, mod)
            if p is None:
                raise DataError(f"case {folder.name}: missing the {mod} file (*_{mod}.nii.gz) in {folder}")
            paths.append(p.resolve())
        seg = _brats_file(folder, "seg")
        case = Case(folder.name, paths, seg.resolve() if seg else None)
        (cases if seg else tests).append(case)
    return DatasetInfo(
        root=root, layout="brats", cases=_sorted_cases(cases), labels=dict(BRATS_LABELS),
        modalities=list(BRATS_MODALITIES), label_mapping={0: 0, 1: 1, 2: 2, 4: 3},
        test_cases=_sorted_cases(tests), regions={k: list(v) for k, v in BRATS_REGIONS.items()},
        regions_class_order=list(BRATS_REGIONS_CLASS_ORDER), name="BraTS",
    )


# -------------------------------------------------------------------------------------------- iseg

ISEG_LABELS = {0: "background", 1: "csf", 2: "gray_matter", 3: "white_matter"}
_ISEG_T1 = re.compile(r"^subject-(\d+)-T1\.(hdr|img|nii|nii\.gz)$")


def _detect_iseg(root: Path) -> bool:
    return any(_ISEG_T1.match(p.name) for p in root.glob("**/subject-*-T1.*"))


def _iseg_file(folder: Path, subject: str, kind: str) -> Path | None:
    for ext in (".hdr", ".nii.gz", ".nii"):
        p = folder / f"subject-{subject}-{kind}{ext}"
        if p.is_file():
            return p
    return None


@register_layout("iseg", _detect_iseg)
def _load_iseg(root: Path) -> DatasetInfo:
    """iSeg 2017/2019 infant brain MRI: T1 and T2 Analyze files; labels 0/10/150/250 -> 0/1/2/3.

    Subjects without a label file (the challenge's test subjects) become test cases.
    """
    cases, tests = [], []
    for t1 in root.glob("**/subject-*-T1.*"):
        m = _ISEG_T1.match(t1.name)
        if not m or t1.suffix == ".img":
            continue
        subject, folder = m.group(1), t1.parent
        t2 = _iseg_file(folder, subject, "T2")
        if t2 is None:
            raise DataError(f"case subject-{subject}: missing the T2 file (subject-{subject}-T2.hdr) in {folder}")
        label = _iseg_file(folder, subject, "label")
        case = Case(f"subject-{subject}", [t1.resolve(), t2.resolve()], label.resolve() if label else None)
        (cases if label else tests).append(case)
    return DatasetInfo(
        root=root, layout="iseg", cases=_sorted_cases(cases), labels=dict(ISEG_LABELS), modalities=["T1", "T2"],
        label_mapping={0: 0, 10: 1, 150: 2, 250: 3}, test_cases=_sorted_cases(tests), name="iSeg",
    )


# ---------------------------------------------------------------------------------------- mrbrains

MRBRAINS_LABELS_11 = {
    0: "background", 1: "cortical_gray_matter", 2: "basal_ganglia", 3: "white_matter",
    4: "white_matter_lesions", 5: "csf", 6: "ventricles", 7: "cerebellum", 8: "brain_stem",
    9: "infarction", 10: "other",
}
MRBRAINS_FILES = {"T1": "pre/reg_T1.nii.gz", "IR": "pre/reg_IR.nii.gz", "FLAIR": "pre/FLAIR.nii.gz"}


def mrbrains_mapping(classes: int) -> tuple[dict[int, str], dict[int, int]]:
    """Class names and the raw-value mapping for MRBrainS 2018 with ``classes`` in {4, 9, 11}.

    - 9 (default, the challenge's task): labels 0..8; infarction (9) and other (10), which the challenge
      does not evaluate, are mapped to background.
    - 11: every raw label kept as its own class.
    - 4: background, GM (cortical GM + basal ganglia), WM (WM + WM lesions), CSF (CSF + ventricles);
      cerebellum, brain stem, infarction and other -> background (the challenge's 3-tissue grouping).
    """
    if classes == 11:
        return dict(MRBRAINS_LABELS_11), {v: v for v in range(11)}
    if classes == 9:
        labels = {k: v for k, v in MRBRAINS_LABELS_11.items() if k <= 8}
        mapping = {v: v for v in range(9)}
        mapping.update({9: 0, 10: 0})
        return labels, mapping
    if classes == 4:
        mapping = {0: 0, 1: 1, 2: 1, 3: 2, 4: 2, 5: 3, 6: 3, 7: 0, 8: 0, 9: 0, 10: 0}
        return {0: "background", 1: "gray_matter", 2: "white_matter", 3: "csf"}, mapping
    raise DataError(f"mrbrains: classes must be 4, 9 or 11, got {classes}")


def _detect_mrbrains(root: Path) -> bool:
    return any(True for _ in root.glob("*/pre/reg_T1.nii.gz")) or any(True for _ in root.glob("*/*/pre/reg_T1.nii.gz"))


@register_layout("mrbrains", _detect_mrbrains)
def _load_mrbrains(root: Path, classes: int = 9) -> DatasetInfo:
    """MRBrainS 2018: a folder per subject with ``pre/reg_T1``, ``pre/reg_IR``, ``pre/FLAIR``, ``segm``.

    Args:
        root: dataset folder.
        classes: 9 (default), 11 or 4 — see :func:`mrbrains_mapping`.
    """
    labels, mapping = mrbrains_mapping(int(classes))
    folders = {p.parent.parent for p in list(root.glob("*/pre/reg_T1.nii.gz")) + list(root.glob("*/*/pre/reg_T1.nii.gz"))}
    cases, tests = [], []
    for folder in folders:
        paths = []
        for mod, rel in MRBRAINS_FILES.items():
            p = folder / rel
            if not p.is_file():
                raise DataError(f"case {folder.name}: missing the {mod} file {rel} in {folder}")
            paths.append(p.resolve())
        seg = folder / "segm.nii.gz"
        case = Case(folder.name, paths, seg.resolve() if seg.is_file() else None)
        (cases if seg.is_file() else tests).append(case)
    return DatasetInfo(
        root=root, layout="mrbrains", cases=_sorted_cases(cases), labels=labels,
        modalities=list(MRBRAINS_FILES), label_mapping=mapping, test_cases=_sorted_cases(tests),
        name="MRBrainS18",
    )


MRBRAINS13_FILES = {"T1": "T1", "T1_IR": "T1_IR", "T2_FLAIR": "T2_FLAIR"}
MRBRAINS13_LABELS_4 = {0: "background", 1: "csf", 2: "gray_matter", 3: "white_matter"}
_MRBRAINS13_SUFFIXES = (".nii.gz", ".nii", ".mhd")


def _mrbrains13_file(folder: Path, stem: str) -> Path | None:
    for ext in _MRBRAINS13_SUFFIXES:
        if (folder / f"{stem}{ext}").is_file():
            return folder / f"{stem}{ext}"
    return None


def _mrbrains13_folders(root: Path) -> list[Path]:
    """Subject folders: those holding a T1_IR scan, at most two levels below the root."""
    hits = [p for pattern in ("*/T1_IR.*", "*/*/T1_IR.*") for p in root.glob(pattern)]
    return sorted({p.parent for p in hits if p.name.endswith(_MRBRAINS13_SUFFIXES)}, key=lambda p: natural_key(p.name))


def _detect_mrbrains13(root: Path) -> bool:
    return any(_mrbrains13_file(f, "T2_FLAIR") is not None for f in _mrbrains13_folders(root))


@register_layout("mrbrains2013", _detect_mrbrains13)
def _load_mrbrains13(root: Path, classes: int = 4) -> DatasetInfo:
    """MRBrainS 2013: a folder per subject (e.g. ``TrainingData/1``) with ``T1``, ``T1_IR``, ``T2_FLAIR``.

    The challenge gives two label files per training subject: ``LabelsForTesting`` (the evaluated task:
    0 background, 1 CSF, 2 gray matter, 3 white matter) and ``LabelsForTraining`` (0..8, the 2018 edition's
    first nine structures). Subjects without the chosen label file (``TestData``) become test cases.

    Args:
        root: dataset folder (the one holding ``TrainingData``/``TestData``, or a subject folders' parent).
        classes: 4 (default) reads ``LabelsForTesting``; 9 reads ``LabelsForTraining``.
    """
    if int(classes) == 4:
        labels, label_stem = dict(MRBRAINS13_LABELS_4), "LabelsForTesting"
    elif int(classes) == 9:
        labels, label_stem = {k: v for k, v in MRBRAINS_LABELS_11.items() if k <= 8}, "LabelsForTraining"
    else:
        raise DataError(f"mrbrains2013: classes must be 4 or 9, got {classes}")
    cases, tests = [], []
    for folder in _mrbrains13_folders(root):
        paths = []
        for mod, stem in MRBRAINS13_FILES.items():
            p = _mrbrains13_file(folder, stem)
            if p is None:
                raise DataError(f"case {folder.name}: missing the {mod} file ({stem}.nii) in {folder}")
            paths.append(p.resolve())
        seg = _mrbrains13_file(folder, label_stem)
        # subject numbers restart in TestData, so the parent folder is part of the id
        cid = folder.name if folder.parent == root else f"{folder.parent.name}_{folder.name}"
        case = Case(cid, paths, seg.resolve() if seg else None)
        (cases if seg else tests).append(case)
    return DatasetInfo(
        root=root, layout="mrbrains2013", cases=_sorted_cases(cases), labels=labels,
        modalities=list(MRBRAINS13_FILES), label_mapping=None, test_cases=_sorted_cases(tests),
        name="MRBrainS13",
    )


# ------------------------------------------------------------------------------------ folder / csv


def _pattern_regex(pattern: str) -> re.Pattern:
    """Regex for a pattern with one ``{case}`` placeholder and glob wildcards."""
    parts = pattern.split("{case}")
    if len(parts) != 2:
        raise DataError(f"pattern '{pattern}' must contain '{{case}}' exactly once (e.g. '{{case}}_t1.nii.gz')")

    def glob_to_re(text: str) -> str:
        out = ""
        for ch in text:
            out += "[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch)
        return out

    return re.compile("^" + glob_to_re(parts[0]) + "(?P<case>[^/]+?)" + glob_to_re(parts[1]) + "$")


def _match_pattern(root: Path, pattern: str) -> dict[str, Path]:
    regex = _pattern_regex(pattern)
    found: dict[str, Path] = {}
    for hit in glob.glob(str(root / pattern.replace("{case}", "*")), recursive=True):
        rel = Path(hit).relative_to(root).as_posix()
        m = regex.match(rel)
        if m:
            found[m.group("case")] = Path(hit).resolve()
    return found


def _labels_from_files(paths: list[Path], where: str) -> dict[int, str]:
    """Read the distinct label values of the given files (used when the user gave no labels)."""
    import numpy as np

    from medzoo.data.loading import read_volume_any

    values: set[int] = set()
    for p in paths:
        values.update(int(v) for v in np.unique(read_volume_any(p).array))
    log.info("%s: label values %s read from %d label files", where, sorted(values), len(paths))
    values.add(0)
    return {v: ("background" if v == 0 else f"label_{v}") for v in sorted(values)}


def _finish_custom(
    root: Path, layout: str, cases: list[Case], tests: list[Case], modalities: list[str],
    labels: dict | None, name: str,
) -> DatasetInfo:
    if labels is None:
        raw = _labels_from_files([c.label_path for c in cases if c.label_path], str(root))
    else:
        raw = _int_labels(labels, root)
    class_labels, mapping = _contiguous(raw)
    return DatasetInfo(
        root=root, layout=layout, cases=_sorted_cases(cases), labels=class_labels, modalities=modalities,
        label_mapping=mapping, test_cases=_sorted_cases(tests), name=name or root.name,
    )


@register_layout("folder", None, auto=False)
def _load_folder(
    root: Path, images: dict[str, str] | None = None, label: str | None = None,
    labels: dict | None = None, name: str = "",
) -> DatasetInfo:
    """Cases found by glob patterns, one per modality and one for the label.

    Args:
        root: dataset folder; patterns are relative to it (``**`` allowed).
        images: modality name -> pattern with one ``{case}`` placeholder, e.g.
            ``{"t1": "{case}/t1.nii.gz", "t2": "{case}/t2.nii.gz"}`` (channel order = dict order).
        label: label pattern, e.g. ``"{case}/seg.nii.gz"`` (None: unlabelled dataset).
        labels: raw label value -> name; None reads the values from the label files.
        name: dataset name.

    Cases with every modality but no label become test cases; a case with some modalities missing is an
    error naming it.
    """
    if not images:
        raise DataError(f"{root}: the folder layout needs images={{modality: pattern}} (with '{{case}}')")
    per_mod = {mod: _match_pattern(root, pat) for mod, pat in images.items()}
    label_files = _match_pattern(root, label) if label else {}
    ids = set().union(*[set(v) for v in per_mod.values()])
    cases, tests = [], []
    for cid in ids:
        missing = [m for m in images if cid not in per_mod[m]]
        if missing:
            raise DataError(f"case {cid}: missing modality file(s) for {missing} (patterns {[images[m] for m in missing]})")
        case = Case(cid, [per_mod[m][cid] for m in images], label_files.get(cid))
        (cases if case.label_path else tests).append(case)
    return _finish_custom(root, "folder", cases, tests, list(images), labels, name)


def _detect_csv(root: Path) -> bool:
    return root.is_file() and root.suffix.lower() == ".csv"


@register_layout("csv", _detect_csv)
def _load_csv(
    root: Path, label_column: str = "label", id_column: str = "case_id", labels: dict | None = None,
    name: str = "",
) -> DatasetInfo:
    """A CSV with one column per modality plus the label; paths are relative to the CSV file.

    Args:
        root: the CSV file (or a folder holding exactly one ``*.csv``).
        label_column: name of the label column (may be empty for test rows).
        id_column: optional case-id column; without it the id is the first image's file name.
        labels: raw label value -> name; None reads the values from the label files.
        name: dataset name.

    Every other column is a modality, in column order.
    """
    if root.is_dir():
        csvs = sorted(root.glob("*.csv"))
        if len(csvs) != 1:
            raise DataError(f"{root}: the csv layout needs the CSV file itself (found {len(csvs)} csv files)")
        root = csvs[0]
    with open(root, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise DataError(f"{root}: empty CSV")
    columns = list(rows[0].keys())
    modalities = [c for c in columns if c not in (label_column, id_column)]
    if not modalities:
        raise DataError(f"{root}: no modality columns (columns: {columns})")
    base = root.parent
    cases, tests = [], []
    for n, row in enumerate(rows, start=2):
        paths = []
        for mod in modalities:
            if not row.get(mod):
                which = f" (case {row[id_column]})" if row.get(id_column) else ""
                raise DataError(f"{root}: line {n}{which} has no '{mod}' path (missing modality)")
            paths.append((base / row[mod]).resolve())
        cid = row.get(id_column) or _strip_suffix(paths[0].name)
        lab = row.get(label_column)
        case = Case(cid, paths, (base / lab).resolve() if lab else None)
        (cases if lab else tests).append(case)
    return _finish_custom(root.parent, "csv", cases, tests, modalities, labels, name)
