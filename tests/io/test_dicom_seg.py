"""DICOM SEG output: frames on the right source slices, the NIfTI labels decoded back, the references and
segment descriptions 3D Slicer and OHIF read (a synthetic oblique, anisotropic series written with pydicom)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from medzoo.errors import ConfigError, VolumeError
from medzoo.io.dicom import read_dicom_series
from medzoo.io.readers import read_volume, write_volume
from medzoo.io.volume import Volume
from support.dicom import FRAME_OF_REFERENCE_UID, SERIES_UID, STUDY_UID, write_series

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")

from medzoo.io.dicom_seg import write_dicom_seg  # noqa: E402

NAMES = {0: "background", 1: "liver", 2: "tumour", 3: "vessel"}


def decode_seg(seg, source_dir) -> np.ndarray:
    """(slice, row, column) label array on the source series, rebuilt from the SEG's frames alone."""
    sources = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, sorted(source_dir.iterdir()))}
    order = sorted(sources, key=lambda uid: int(sources[uid].InstanceNumber))
    first = sources[order[0]]
    out = np.zeros((len(order), first.Rows, first.Columns), dtype=np.uint8)
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    for frame, item in zip(pixels, seg.PerFrameFunctionalGroupsSequence):
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        position = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        np.testing.assert_allclose(position, np.asarray(sources[uid].ImagePositionPatient, dtype=float), atol=1e-4)
        groups = item if "SegmentIdentificationSequence" in item else seg.SharedFunctionalGroupsSequence[0]
        segment = int(groups.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        out[order.index(uid)][frame > 0] = segment
    return out


@pytest.fixture
def series(tmp_path):
    zyx = np.random.default_rng(0).integers(0, 1000, size=(6, 9, 7)).astype(np.int16)
    zyx[2] = 0  # one slice without any label: it gets no frame
    write_series(tmp_path / "series", zyx)
    return tmp_path / "series"


def labels_of(volume: Volume) -> Volume:
    """Labels 0-3 from the intensity (slice-dependent, so frames on the wrong slice would show)."""
    values = volume.array[0]
    labels = (values > 250).astype(np.uint8) + (values > 500) + (values > 750)
    return Volume(labels[None], volume.affine, {})


def test_seg_frames_lie_on_their_source_slices_and_decode_to_the_nifti_labels(series, tmp_path):
    image = read_dicom_series(series)
    nifti = read_volume(write_volume(labels_of(image), tmp_path / "labels.nii.gz"))
    out = write_dicom_seg(nifti, series, tmp_path / "out" / "labels.dcm", NAMES)
    seg = pydicom.dcmread(out)
    assert seg.Modality == "SEG" and seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    decoded = decode_seg(seg, series)
    expected = np.transpose(nifti.array[0], (2, 1, 0))  # (I=column, J=row, K=slice) -> (slice, row, column)
    np.testing.assert_array_equal(decoded, expected)
    assert len(np.unique(expected)) == 4


def test_seg_references_the_source_series_with_named_segments(series, tmp_path):
    image = read_dicom_series(series)
    seg = pydicom.dcmread(write_dicom_seg(labels_of(image), series, tmp_path / "labels.dcm", NAMES,
                                          algorithm_version="9.9"))
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == SERIES_UID
    assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == 6
    assert seg.FrameOfReferenceUID == FRAME_OF_REFERENCE_UID
    assert seg.StudyInstanceUID == STUDY_UID and seg.PatientID == "P001"
    assert seg.SeriesInstanceUID != SERIES_UID
    segments = seg.SegmentSequence
    assert [s.SegmentLabel for s in segments] == ["liver", "tumour", "vessel"]
    assert [int(s.SegmentNumber) for s in segments] == [1, 2, 3]
    assert all(s.SegmentAlgorithmType == "AUTOMATIC" and s.SegmentAlgorithmName == "medzoo" for s in segments)
    assert segments[0].SegmentedPropertyCategoryCodeSequence[0].CodeMeaning == "Tissue"
    assert segments[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == "9.9"


def test_labels_off_the_series_grid_are_refused(series, tmp_path):
    labels = labels_of(read_dicom_series(series))
    shifted = labels.affine.copy()
    shifted[:3, 3] += shifted[:3, 0] * 0.5  # half a voxel along i
    with pytest.raises(VolumeError, match="not on the grid"):
        write_dicom_seg(Volume(labels.array, shifted, {}), series, tmp_path / "x.dcm", NAMES)
    assert not (tmp_path / "x.dcm").exists()


def test_a_label_without_a_name_is_refused(series, tmp_path):
    labels = labels_of(read_dicom_series(series))
    with pytest.raises(VolumeError, match="without a label name"):
        write_dicom_seg(labels, series, tmp_path / "x.dcm", {0: "background", 1: "liver"})


def test_without_highdicom_the_error_says_what_to_install(series, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "highdicom", None)
    labels = labels_of(read_dicom_series(series))
    with pytest.raises(ConfigError, match=r"medzoo\[dicom\]"):
        write_dicom_seg(labels, series, tmp_path / "x.dcm", NAMES)


def test_predict_a_series_to_dicom_seg_equals_its_nifti_prediction(series, tmp_path, monkeypatch, capsys):
    from medzoo.cli import main
    from support.inference import THRESHOLD, make_run, register_threshold

    register_threshold(monkeypatch)
    run, _ = make_run(tmp_path / "run", THRESHOLD, 1, 2, patch_size=(8, 8, 8), normalization=["none"],
                      labels={0: "background", 1: "bright"})
    common = ["predict", "--model", str(run), "--input", str(series), "--backend", "torch", "--no-progress"]
    assert main([*common, "--output", str(tmp_path / "nifti")]) == 0
    assert main([*common, "--output", str(tmp_path / "seg"), "--output-format", "dicom-seg"]) == 0
    assert "wrote 1/1" in capsys.readouterr().out
    nifti = read_volume(tmp_path / "nifti" / "series.nii.gz")
    np.testing.assert_allclose(nifti.affine, read_dicom_series(series).affine, atol=1e-5)
    seg = pydicom.dcmread(tmp_path / "seg" / "series.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["bright"]
    np.testing.assert_array_equal(decode_seg(seg, series), np.transpose(nifti.array[0], (2, 1, 0)))
    assert 0 < nifti.array.mean() < 1


def test_dicom_seg_output_needs_dicom_input(tmp_path, monkeypatch):
    from medzoo.inference.predictor import predict
    from support.inference import THRESHOLD, blob_image, make_run, register_threshold

    register_threshold(monkeypatch)
    run, _ = make_run(tmp_path / "run", THRESHOLD, 1, 2, patch_size=(8, 8, 8))
    write_volume(blob_image(), tmp_path / "scan.nii.gz")
    report = predict(run, tmp_path / "scan.nii.gz", tmp_path / "out", output_format="dicom-seg", backend="torch",
                     progress=False)
    assert not report.written and "DICOM series" in report.failed[0][1]


def test_a_folder_of_series_folders_is_one_case_per_series(tmp_path):
    from medzoo.inference.inputs import collect_cases

    zyx = np.zeros((3, 5, 4), dtype=np.int16)
    for name in ("patient_b", "patient_a"):
        write_series(tmp_path / "cohort" / name, zyx)
    (tmp_path / "cohort" / "notes").mkdir()
    cases = collect_cases(tmp_path / "cohort")
    assert [(c.name, c.output_name) for c in cases] == [("patient_a", "patient_a.nii.gz"),
                                                        ("patient_b", "patient_b.nii.gz")]
    assert [c.name for c in collect_cases(tmp_path / "cohort" / "patient_a")] == ["patient_a"]
    with pytest.raises(VolumeError, match="no image files or DICOM series"):
        collect_cases(tmp_path / "cohort" / "notes")
