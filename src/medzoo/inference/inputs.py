"""What to predict: the cases of a file, a folder or a dataset layout, and reading one case.

A case is one scan: one file (3D, or 4D with the modalities as channels) or nnU-Net style channel files
``NAME_0000.ext``, ``NAME_0001.ext``, ... Reading goes through the data layer's case reader
(:func:`medzoo.data.loading.load_image`), so prediction accepts exactly what training reads.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medzoo.errors import DataError, VolumeError
from medzoo.io.volume import Volume

log = logging.getLogger(__name__)

__all__ = ["InputCase", "collect_cases", "collect_layout_cases", "read_case"]

#: nnU-Net style channel files: ``case_0000.nii.gz``, ``case_0001.nii.gz``, ...
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass
class InputCase:
    """One scan to predict.

    Attributes:
        name: the case name (in messages and the probability file's name).
        paths: one file, or one per channel in channel order.
        output_name: the label map's file name.
    """

    name: str
    paths: list[Path]
    output_name: str


def collect_cases(input_path: str | Path) -> list[InputCase]:
    """The cases of a file or a folder.

    A folder's image files (NIfTI, Analyze, NRRD, MetaImage) are one case each, except nnU-Net style
    channel files ``NAME_0000.ext``, ``NAME_0001.ext``, ... which are grouped into case ``NAME`` (channels
    in index order). Output names: the input's file name, or for channel files ``NAME`` + the extension.
    A folder without image files is a DICOM series (one case named after the folder), or holds one series
    folder per case; their output names are ``NAME.nii.gz``.
    """
    from medzoo.io.readers import is_volume_file, volume_suffix

    path = Path(input_path)
    if path.is_file():
        if not is_volume_file(path):
            raise VolumeError(path, "unsupported file type (give a .nii/.nii.gz/.nrrd/.mha/.mhd/.hdr file)")
        return [InputCase(_stem(path), [path], path.name)]
    if not path.is_dir():
        raise VolumeError(path, "input not found")
    files = sorted(p for p in path.iterdir() if p.is_file() and is_volume_file(p) and not p.name.startswith("."))
    # Analyze pairs: keep the header only.
    headers = {p.with_suffix(".hdr") for p in files if p.suffix.lower() == ".hdr"}
    files = [p for p in files if not (p.suffix.lower() == ".img" and p.with_suffix(".hdr") in headers)]
    if not files:
        series = _dicom_series_cases(path)
        if not series:
            raise VolumeError(path, "no image files or DICOM series in this folder")
        return series
    groups: dict[str, list[tuple[int, Path]]] = {}
    cases: list[InputCase] = []
    for p in files:
        match = _CHANNEL_FILE.match(_stem(p))
        if match:
            groups.setdefault(match["case"], []).append((int(match["channel"]), p))
        else:
            cases.append(InputCase(_stem(p), [p], p.name))
    for name, members in groups.items():
        members.sort()
        cases.append(InputCase(name, [p for _, p in members], name + volume_suffix(members[0][1])))
    cases.sort(key=lambda c: c.name)
    return cases


def collect_layout_cases(root: str | Path, layout: str | None = None, **options: Any) -> list[InputCase]:
    """The cases of a dataset folder read through a layout (``msd``, ``brats``, ``iseg``, ...).

    The layout's unlabelled (test) cases when it lists any, else all its cases; each case's modality files
    become its channels in the layout's order. Output names: ``<case id>`` + the first image's extension
    (``.nii.gz`` for Analyze, which cannot hold every affine). ``options`` go to the layout.
    """
    from medzoo.data.layouts import load_dataset
    from medzoo.io.readers import volume_suffix

    info = load_dataset(root, layout=None if layout in (None, "auto") else layout, **options)
    chosen = info.test_cases or info.cases
    if not chosen:
        raise DataError(f"{root}: the {info.layout} layout found no cases to predict")
    cases = []
    for case in chosen:
        suffix = volume_suffix(case.image_paths[0])
        suffix = ".nii.gz" if suffix.lower() in (".hdr", ".img", "") else suffix
        cases.append(InputCase(case.case_id, list(case.image_paths), case.case_id + suffix))
    log.info("%s: predicting %d %s of the %s layout", root, len(cases),
             "test case(s)" if info.test_cases else "case(s)", info.layout)  # fmt: skip
    return cases


def read_case(case: InputCase) -> Volume:
    """Read a case's file(s) with the data layer's reader (channel files must share one grid)."""
    from medzoo.data.case import Case
    from medzoo.data.loading import load_image

    return load_image(Case(case.name, list(case.paths)))


def _dicom_series_cases(folder: Path) -> list[InputCase]:
    """The folder itself when it holds a DICOM series, else each sub-folder that holds one."""
    from medzoo.io.dicom import list_dicom_series

    if list_dicom_series(folder):
        return [InputCase(folder.name, [folder], folder.name + ".nii.gz")]
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [InputCase(p.name, [p], p.name + ".nii.gz") for p in subfolders if list_dicom_series(p)]


def _stem(path: Path) -> str:
    from medzoo.io.readers import volume_suffix

    suffix = volume_suffix(path)
    return path.name[: len(path.name) - len(suffix)] if suffix else path.stem
