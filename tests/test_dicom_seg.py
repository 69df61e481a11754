"""DICOM in, DICOM SEG out: a real case written as an MR study with other series beside it, segmented,
and the SEG read back and checked against the NIfTI result (frames, geometry, references, codes)."""

import hashlib
import json

import highdicom
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image

from conftest import FIXTURES, samprostate
from dicom_fixtures import read_headers, write_series
from SAMProstateSDGLib import __version__
from SAMProstateSDGLib.apps.cli import main
from SAMProstateSDGLib.core.errors import InputError
from SAMProstateSDGLib.io.dataset import canonical_zones
from SAMProstateSDGLib.io.dicom_seg import write_dicom_seg
from SAMProstateSDGLib.io.dicom_series import choose_series, find_series, read_dicom_volume
from SAMProstateSDGLib.io.measurements import measure_image
from SAMProstateSDGLib.io.report import PAGE_SIZE, ReportSubject, slice_captions, write_report
from SAMProstateSDGLib.io.volume_io import normalised_array, read_volume
from SAMProstateSDGLib.methods.registry import method

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def _dummy(direction: tuple[float, ...]) -> sitk.Image:
    """8 slices of real T2 texture: more slices than the T2 axial series, so slice count alone would pick it."""
    crop = sitk.GetArrayFromImage(sitk.ReadImage(str(FIXTURES / "Case00.nii.gz")))[:, 100:164, 100:164]
    image = sitk.GetImageFromArray(np.concatenate([crop, crop]).astype(np.int16))
    image.SetSpacing((1.0, 1.0, 3.0))
    image.SetDirection(direction)
    return image


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """An exported study: axial T2 (the fixture P158-020, 4 slices), sagittal T2 and axial ADC (8 slices each)."""
    folder = tmp_path_factory.mktemp("study")
    t2 = write_series(sitk.ReadImage(str(FIXTURES / "P158-020.nii.gz")), folder / "3_t2_tra", "t2_tse_tra", 3)
    sagittal = write_series(_dummy((0, 0, 1, 1, 0, 0, 0, -1, 0)), folder / "2_t2_sag", "t2_tse_sag", 2)
    adc = write_series(_dummy((1, 0, 0, 0, 1, 0, 0, 0, 1)), folder / "5_adc", "ep2d_diff_tra_ADC", 5)
    return folder, {"t2": t2, "sagittal": sagittal, "adc": adc}


@pytest.fixture(scope="module")
def segmented(study, tmp_path_factory):
    folder, uids = study
    out = tmp_path_factory.mktemp("out")
    result = samprostate(
        "segment", folder, "-o", out / "labels.nii.gz", "--dicom-seg", out / "seg.dcm", "--report", out / "report.json",
        "--report-page", out / "report.png", "--psa", "6.2",
    )
    return out, result.stdout


def test_picks_the_axial_t2_series_by_its_attributes(study):
    folder, uids = study
    series = find_series(folder)
    assert {item.uid for item in series} == set(uids.values())
    assert choose_series(series).uid == uids["t2"]
    assert choose_series(series, uids["adc"]).uid == uids["adc"]
    with pytest.raises(InputError, match="no series with UID 1.2.3"):
        choose_series(series, "1.2.3")


def test_the_small_field_t2_and_then_the_latest_repeat_are_chosen(tmp_path):
    """A large-field pelvic T2 (1 mm pixels, more slices) beside the prostate's small-field T2 (0.4 mm): the latter; of two
    identical small-field series, the later one (a repeat after motion)."""
    write_series(_dummy((1, 0, 0, 0, 1, 0, 0, 0, 1)), tmp_path / "2", "t2_tse_tra_pelvis", 2)
    small = sitk.ReadImage(str(FIXTURES / "P158-020.nii.gz"))
    first = write_series(small, tmp_path / "3", "t2_tse_tra", 3)
    assert choose_series(find_series(tmp_path)).uid == first
    repeat = write_series(small, tmp_path / "4", "t2_tse_tra", 4)
    assert choose_series(find_series(tmp_path)).uid == repeat


def test_among_series_none_named_t2_none_is_guessed(tmp_path):
    """A T2 series named without "T2" beside a DWI series: the DWI (more slices) is not taken for the T2."""
    unnamed = write_series(_dummy((1, 0, 0, 0, 1, 0, 0, 0, 1)), tmp_path / "4", "AX FSE PROSTATE HR", 4)
    write_series(_dummy((1, 0, 0, 0, 1, 0, 0, 0, 1)), tmp_path / "5", "ep2d_diff_b50_800_tra", 5)
    series = find_series(tmp_path)
    with pytest.raises(InputError, match=r'none of the 2 series is named T2 .*choose one with --series-uid: .*"AX FSE PROSTATE HR"'):
        choose_series(series)
    assert choose_series(series, unnamed).uid == unnamed
    assert choose_series([item for item in series if item.uid == unnamed]).uid == unnamed  # the only series is used


@pytest.mark.parametrize("defect, message", [
    ("missing slice", r"its slices are not evenly spaced \(3.00 to 6.00 mm apart: a slice missing\?\)"),
    ("two echoes", r"8 of its images lie at the position of another \(several echoes, b-values or repeats in one series\)"),
    ("sheared", r"its slices are shifted sideways from one to the next"),
])
def test_a_series_that_is_not_an_evenly_spaced_stack_is_refused(tmp_path, capsys, defect, message):
    """Stacked anyway (ITK only warns), such a series has the wrong slice spacing or shape, and a segmentation of it the
    wrong volume; the reader of a batch's DICOM folders refuses it too."""
    import pydicom
    from pydicom.uid import generate_uid

    folder = tmp_path / "t2"
    write_series(_dummy((1, 0, 0, 0, 1, 0, 0, 0, 1)), folder, "t2_tse_tra", 3)
    files = sorted(folder.glob("*.dcm"))
    if defect == "missing slice":
        files.pop(3).unlink()
    for index, path in enumerate(files):
        header = pydicom.dcmread(path)
        if defect == "two echoes":
            header.SOPInstanceUID = header.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            header.EchoNumbers = 2
            header.save_as(path.with_name(f"echo2_{path.name}"))
        elif defect == "sheared":
            header.ImagePositionPatient = [float(header.ImagePositionPatient[0]) + 2.0 * index, *header.ImagePositionPatient[1:]]
            header.save_as(path)
    for read in (read_dicom_volume, read_volume):
        with pytest.raises(InputError, match=message):
            read(folder)
    assert main(["segment", str(folder), "-o", str(tmp_path / "labels.nii.gz")]) == 2
    assert message.split(" ")[0] in capsys.readouterr().err and not (tmp_path / "labels.nii.gz").exists()


def test_reads_the_chosen_series_with_the_geometry_of_the_source_volume(study):
    folder, uids = study
    source = sitk.ReadImage(str(FIXTURES / "P158-020.nii.gz"))
    volume = read_dicom_volume(folder)
    assert volume.series.uid == uids["t2"] and volume.alternatives == 2
    assert volume.image.GetSize() == source.GetSize()
    assert np.allclose(volume.image.GetOrigin(), source.GetOrigin(), atol=1e-3)
    assert np.allclose(volume.image.GetSpacing(), source.GetSpacing(), atol=1e-5)
    assert np.allclose(volume.image.GetDirection(), source.GetDirection(), atol=1e-6)


def test_segment_says_which_series_it_used(segmented, study):
    _, uids = study
    _, stdout = segmented
    assert f'using series 3 "t2_tse_tra" (MR, axial, 4 slices, UID {uids["t2"]}), as the axial T2 series; 2 other series' in stdout


def test_seg_frames_geometry_and_references_match_the_nifti_result(segmented, study):
    out, _ = segmented
    folder, uids = study
    labels_image = sitk.ReadImage(str(out / "labels.nii.gz"))
    labels = sitk.GetArrayFromImage(labels_image)
    assert labels.any()
    source = {header.SOPInstanceUID: header for header in read_headers(folder / "3_t2_tra")}
    seg = highdicom.seg.segread(out / "seg.dcm")
    assert seg.SOPClassUID == SEGMENTATION_STORAGE and seg.SegmentationType == "BINARY"
    first = next(iter(source.values()))
    assert (seg.StudyInstanceUID, seg.FrameOfReferenceUID, seg.PatientID) == (first.StudyInstanceUID, first.FrameOfReferenceUID, first.PatientID)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uids["t2"]
    assert {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} == set(source)
    orientation = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    assert np.allclose([float(v) for v in orientation], np.array(labels_image.GetDirection()).reshape(3, 3)[:, :2].T.ravel(), atol=1e-6)
    spacing = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    assert np.allclose([float(v) for v in spacing], labels_image.GetSpacing()[1::-1], atol=1e-5)
    gland_slices = np.flatnonzero(labels.reshape(len(labels), -1).any(axis=1))
    assert seg.NumberOfFrames == len(gland_slices)  # empty slices are left out
    frames = seg.pixel_array.reshape(seg.NumberOfFrames, *labels.shape[1:])
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        referenced = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(position, [float(v) for v in source[referenced].ImagePositionPatient], atol=1e-4)
        index = labels_image.TransformPhysicalPointToIndex(position)[2]
        assert np.allclose(labels_image.TransformIndexToPhysicalPoint((0, 0, index)), position, atol=1e-3)
        assert np.array_equal(frame > 0, labels[index] > 0)
    segment = seg.SegmentSequence[0]
    assert (segment.SegmentedPropertyTypeCodeSequence[0].CodeValue, segment.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator) == ("41216001", "SCT")
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "SAMProstateSDG zero-shot" and "coarse-resnet18-runmc sha256:" in algorithm.AlgorithmParameters
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    assert seg.SoftwareVersions == algorithm.AlgorithmVersion == __version__  # the Lib's own, inside Slicer too (no pip metadata there)


def test_report_json_and_page_hold_the_measurements(segmented):
    out, stdout = segmented
    labels_image = sitk.ReadImage(str(out / "labels.nii.gz"))
    report = json.loads((out / "report.json").read_text(), parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    expected = measure_image(sitk.GetArrayFromImage(labels_image), labels_image, psa_ng_ml=6.2)
    assert report["measurements"] == json.loads(json.dumps(expected.to_json()))
    assert report["measurements"]["psa_density_ng_ml_per_ml"] == pytest.approx(6.2 / expected.volume_ml, abs=1e-3)
    assert {model["id"] for model in report["provenance"]["models"]} == {"litemedsam", "coarse-resnet18-runmc"}
    assert report["provenance"]["version"] == __version__
    assert "warnings" not in report  # a right header: nothing to beware of
    assert f"Gland volume (from the contour): {expected.volume_ml:.1f} mL" in stdout
    with Image.open(out / "report.png") as page:
        assert page.size == PAGE_SIZE


def test_zonal_seg_codes_transition_and_peripheral_zone(study, tmp_path):
    """The reference zones of the fixture written as a zonal SEG: two SNOMED CT coded segments, one frame per zone and slice."""
    folder, _ = study
    volume = read_dicom_volume(folder)
    zones = canonical_zones(sitk.GetArrayFromImage(sitk.ReadImage(str(FIXTURES / "P158-020_seg.nii.gz"))))
    write_dicom_seg(tmp_path / "zones.dcm", zones, volume.series, zonal=True, provenance=method("samed").provenance())
    seg = pydicom.dcmread(tmp_path / "zones.dcm")
    codes = [(item.SegmentLabel, item.SegmentedPropertyTypeCodeSequence[0].CodeValue) for item in seg.SegmentSequence]
    assert codes == [("Transition zone", "399384005"), ("Peripheral zone", "279706003")]
    per_segment = [item.SegmentIdentificationSequence[0].ReferencedSegmentNumber for item in seg.PerFrameFunctionalGroupsSequence]
    assert per_segment.count(1) == int((zones == 1).any(axis=(1, 2)).sum()) and per_segment.count(2) == int((zones == 2).any(axis=(1, 2)).sum())


def test_report_page_is_also_written_as_pdf(tmp_path):
    image = sitk.ReadImage(str(FIXTURES / "Case29.nii.gz"))
    labels = canonical_zones(sitk.GetArrayFromImage(sitk.ReadImage(str(FIXTURES / "Case29_seg.nii.gz"))))
    write_report(
        tmp_path / "report.pdf", ReportSubject("Case29.nii.gz"), image, normalised_array(image), labels,
        measure_image(labels, image, zonal=True, psa_ng_ml=4.0), method("samed").provenance(), zonal=True,
    )
    assert (tmp_path / "report.pdf").read_bytes()[:5] == b"%PDF-"


def test_report_tiles_name_the_file_slice_and_position_whatever_the_slice_order():
    """The report shows slices in LPS order (inferior first); its captions give the image file's own 0-based slice
    index, as the console, the boxes JSON and the overlay do, and the superior position Slicer shows. A volume stored
    superior first (slices flipped, the same anatomy) gets the same positions and the mirrored indices."""
    image = sitk.ReadImage(str(FIXTURES / "Case29.nii.gz"))
    flipped = sitk.Flip(image, [False, False, True])
    slices = image.GetSize()[2]
    shown = [0, 1, slices - 1]
    captions, flipped_captions = slice_captions(image, shown), slice_captions(flipped, shown)
    centre = [(size - 1) / 2 for size in image.GetSize()[:2]]
    superior = [image.TransformContinuousIndexToPhysicalPoint((*centre, index))[2] for index in range(slices)]
    stored_inferior_first = superior[0] < superior[-1]
    for position, caption, flipped_caption in zip(shown, captions, flipped_captions):
        file_slice = position if stored_inferior_first else slices - 1 - position
        assert caption == f"slice {file_slice}, S {superior[file_slice]:.1f} mm"
        assert flipped_caption == f"slice {slices - 1 - file_slice}, S {superior[file_slice]:.1f} mm"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dicom-seg", "{out}/seg.dcm"], "need a DICOM folder"),
        (["--series-uid", "1.2.3"], "need a DICOM folder"),
        (["--report-page", "{out}/report.jpg"], "writes .png or .pdf"),
        (["--psa", "-3"], "--psa must be a positive number"),
        (["--report", "{out}/labels.nii.gz"], "is given for two outputs"),
    ],
)
def test_clinical_options_refuse_mistakes_before_writing_anything(tmp_path, capsys, extra, message):
    arguments = ["segment", str(FIXTURES / "Case29.nii.gz"), "-o", str(tmp_path / "labels.nii.gz"), *[value.format(out=tmp_path) for value in extra]]
    assert main(arguments) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("samprostate: error:") and message in error and len(error.splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_a_seg_from_the_user_s_boxes_is_semiautomatic(study, tmp_path):
    """Boxes (or clicks) a user checked or edited, given with --boxes-in, make the SEG's segments SEMIAUTOMATIC, as Slicer's export does."""
    folder, _ = study
    boxes = {"format": "samprostate-boxes", "version": 2, "image": {"size": [270, 270, 4]},
             "boxes": [{"slice": index, "pixel": [90, 80, 190, 170]} for index in (1, 2)]}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    assert main(["segment", str(folder), "-o", str(tmp_path / "labels.nii.gz"), "--boxes-in", str(tmp_path / "boxes.json"),
                 "--dicom-seg", str(tmp_path / "seg.dcm"), "--report", str(tmp_path / "report.json")]) == 0
    assert highdicom.seg.segread(tmp_path / "seg.dcm").SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["boxes"] == {"file": str(tmp_path / "boxes.json"), "sha256": hashlib.sha256((tmp_path / "boxes.json").read_bytes()).hexdigest()}


def test_seg_is_never_written_into_the_input_folder(study, capsys):
    folder, _ = study
    assert main(["segment", str(folder), "-o", str(folder.parent / "x.nii.gz"), "--dicom-seg", str(folder / "seg.dcm")]) == 2
    assert "inside the input folder" in capsys.readouterr().err and not (folder / "seg.dcm").exists()


def test_a_seg_that_cannot_be_made_leaves_no_output_at_all(study, tmp_path, capsys, monkeypatch):
    """The label volume, report JSON, page and SEG are written together: when highdicom refuses to build the SEG (here
    made to, as it refuses headers that contradict each other), none of them is written, and the user reads one line."""
    folder, _ = study

    def refuse(**_):
        raise ValueError("Plane positions must not contain duplicates")

    monkeypatch.setattr(highdicom.seg, "Segmentation", refuse)
    outputs = [tmp_path / name for name in ("labels.nii.gz", "seg.dcm", "report.json", "report.png")]
    code = main(["segment", str(folder), "-o", str(outputs[0]), "--dicom-seg", str(outputs[1]), "--report", str(outputs[2]),
                 "--report-page", str(outputs[3]), "--device", "cpu", "--backend", "torch", "--precision", "fp32"])
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and error.startswith("samprostate: error: cannot make a DICOM SEG of series 3") and "duplicates" in error
    assert not any(path.exists() for path in outputs) and not list(tmp_path.glob(".*"))
