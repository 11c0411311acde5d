"""Reading a DICOM series folder as a :class:`~medzoo.io.volume.Volume` (SimpleITK / GDCM).

The slices are sorted by SimpleITK's ``ImageSeriesReader`` along the slice normal; spacing between slices
comes from the image positions, the in-plane axes from ImageOrientationPatient. The array is channel-first
in ITK's voxel order (i along the rows direction, j along the columns, k along the stack), the affine RAS+.
"""

from __future__ import annotations

import logging
from pathlib import Path

from medzoo.errors import VolumeError
from medzoo.io.volume import Volume

log = logging.getLogger(__name__)


def list_dicom_series(folder: str | Path) -> dict[str, list[str]]:
    """Series instance UID -> sorted slice file names, for every series directly in ``folder``."""
    import SimpleITK as sitk

    folder = Path(folder)
    reader = sitk.ImageSeriesReader()
    ids = reader.GetGDCMSeriesIDs(str(folder)) or ()
    return {sid: list(reader.GetGDCMSeriesFileNames(str(folder), sid)) for sid in ids}


def read_dicom_series(folder: str | Path, series_uid: str | None = None) -> Volume:
    """Read one DICOM series folder into a 3D Volume.

    Args:
        folder: folder holding the slice files of one series (files of other series are ignored; with
            several series the one with most slices is read unless ``series_uid`` names one).
        series_uid: SeriesInstanceUID to read.

    Returns:
        Volume (1, I, J, K) (or (C, I, J, K) for multi-component pixels) in the stored dtype after
        rescale slope/intercept (SimpleITK applies them), with its RAS+ affine.

    Raises:
        VolumeError: the folder is missing, holds no DICOM series, the named series is absent, or the
            slices cannot be read.
    """
    import SimpleITK as sitk

    from medzoo.io.sitk_convert import check_finite, one_line, sitk_to_array_affine

    folder = Path(folder)
    if not folder.exists():
        raise VolumeError(folder, "folder not found")
    if not folder.is_dir():
        raise VolumeError(folder, "not a folder (a DICOM series is read from the folder of its slices)")
    series = list_dicom_series(folder)
    if not series:
        raise VolumeError(folder, "no DICOM series found in this folder")
    if series_uid is not None:
        if series_uid not in series:
            raise VolumeError(folder, f"no DICOM series {series_uid} (found: {', '.join(series)})")
        chosen = series_uid
    else:
        chosen = max(series, key=lambda sid: len(series[sid]))
        if len(series) > 1:
            log.warning("%s: %d DICOM series; reading %s (%d slices)", folder, len(series), chosen,
                        len(series[chosen]))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(series[chosen])
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise VolumeError(folder, f"cannot read DICOM series ({one_line(err)})") from err
    array, affine = sitk_to_array_affine(image, folder)
    check_finite(array, folder)
    return Volume(array, affine, {"path": str(folder), "series_uid": chosen})
