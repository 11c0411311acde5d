"""A small synthetic DICOM series written with pydicom: oblique orientation, anisotropic spacing, file names
that do not follow the slice order."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SPACING = (0.8, 1.1, 2.5)  # column spacing (along a row), row spacing, slice spacing: mm
ORIGIN_LPS = np.array([-40.5, 25.25, 12.75])
STUDY_UID = "1.2.826.0.1.3680043.8.498.10"
SERIES_UID = "1.2.826.0.1.3680043.8.498.11"
FRAME_OF_REFERENCE_UID = "1.2.826.0.1.3680043.8.498.12"


def rotation(ax: float = 15.0, az: float = -20.0) -> np.ndarray:
    """Columns: the row direction, the column direction and the slice normal (LPS)."""
    ax, az = np.deg2rad([ax, az])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ rx


def write_series(folder: Path, array_zyx: np.ndarray, direction: np.ndarray | None = None) -> list[Path]:
    """One MR Image Storage file per slice of int16 (slice, row, column) voxels; file names run backwards."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    direction = rotation() if direction is None else direction
    folder.mkdir(parents=True, exist_ok=True)
    n, rows, cols = array_zyx.shape
    paths = []
    for k in range(n):
        sop_uid = f"{SERIES_UID}.{k + 1}"
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, sop_uid
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Test", "P001", "19700101", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY_UID, SERIES_UID
        ds.FrameOfReferenceUID = FRAME_OF_REFERENCE_UID
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", "A1"
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", 1, k + 1
        ds.Manufacturer = "synthetic"
        ds.PositionReferenceIndicator = ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*direction[:, 0], *direction[:, 1])]
        position = ORIGIN_LPS + k * SPACING[2] * direction[:, 2]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.PixelSpacing = [SPACING[1], SPACING[0]]  # between rows \ between columns
        ds.SliceThickness = SPACING[2]
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.ascontiguousarray(array_zyx[k], dtype=np.int16).tobytes()
        path = folder / f"IM{n - k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
