"""DICOM SEG, report page and report JSON from the module's logic, against real MRML (slicer-core).

A real oblique case (Case00) is written as a DICOM MR series and loaded as Slicer's DICOM module
loads it: Slicer's volume reader on the series' files, and the SOP Instance UIDs in the node's
``DICOM.instanceUIDs`` attribute (the "database" that finds their files is a dictionary here).
The reference zones become the segmentation node, which the user then edits; what is exported
must be the node as edited, on the source images' geometry.
"""

from __future__ import annotations

import hashlib
import json

import highdicom
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import slicer  # slicer-core, a test requirement: a missing one must fail, never skip
from PIL import Image

from conftest import FIXTURES
from dicom_fixtures import write_series
from SAMProstateSDGLib.apps.training_process import register_trained_model
from SAMProstateSDGLib.core.catalog import default_entry
from SAMProstateSDGLib.core.errors import InputError
from SAMProstateSDGLib.io.dataset import canonical_zones
from SAMProstateSDGLib.io.measurements import measure_image
from SAMProstateSDGLib.io.report import PAGE_SIZE
from SAMProstateSDGLib.methods.registry import ZONE_SEGMENTS
from SAMProstateSDGLib.slicerapp import mrml as bridge
from SAMProstateSDGLib.slicerapp.clinical_export import DICOM_INSTANCES_ATTRIBUTE
from SAMProstateSDGLib.slicerapp.workflow import ProstateWorkflow, checkpointModel

EDITED_SLICE = 1  # the user erases the peripheral zone on this slice in the Segment Editor


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """Case00 (oblique) as a DICOM series: (folder, the SimpleITK image, SOP Instance UID -> file)."""
    image = sitk.ReadImage(str(FIXTURES / "Case00.nii.gz"))
    folder = tmp_path_factory.mktemp("dicom") / "t2_tra"
    write_series(image, folder, "t2_tse_tra", 3)
    files = sorted(folder.glob("*.dcm"))
    return folder, image, {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID): str(path) for path in files}


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture
def dicom_volume(scene, series):
    """The series loaded as Slicer's DICOM scalar volume plugin loads it."""
    folder, _, files = series
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "3: t2_tse_tra")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    ordered = sorted(files.items(), key=lambda item: item[1])
    storage.SetFileName(ordered[0][1])
    for _, path in ordered:
        storage.AddFileName(path)
    storage.SetSingleFile(False)
    assert storage.ReadData(node)
    node.SetAttribute(DICOM_INSTANCES_ATTRIBUTE, " ".join(uid for uid, _ in ordered))
    return node


@pytest.fixture
def edited(dicom_volume):
    """(segmentation node with the reference zones, PZ erased on EDITED_SLICE by the user; the edited labels)."""
    zones = canonical_zones(sitk.GetArrayFromImage(sitk.ReadImage(str(FIXTURES / "Case00_seg.nii.gz"))))
    segmentation, ids = bridge.add_label_segments(zones, dicom_volume, segments=ZONE_SEGMENTS)
    assert (zones[EDITED_SLICE] == 2).any()
    zones = zones.copy()
    zones[EDITED_SLICE][zones[EDITED_SLICE] == 2] = 0
    bridge.set_segment_mask(segmentation, ids[2], zones == 2, dicom_volume)
    return segmentation, zones


@pytest.fixture(scope="module")
def workflow(tmp_path_factory) -> ProstateWorkflow:
    return ProstateWorkflow(tmp_path_factory.mktemp("user"))


def test_seg_of_the_edited_node_references_the_source_images(workflow, dicom_volume, edited, series, tmp_path):
    segmentation, zones = edited
    folder, image, files = series
    workflow.exportDicomSeg(dicom_volume, segmentation, tmp_path / "seg.dcm", files.get, method="samed")

    seg = highdicom.seg.segread(tmp_path / "seg.dcm")
    source = {uid: pydicom.dcmread(path, stop_before_pixels=True) for uid, path in files.items()}
    first = next(iter(source.values()))
    assert (seg.StudyInstanceUID, seg.FrameOfReferenceUID, seg.PatientID) == (first.StudyInstanceUID, first.FrameOfReferenceUID, first.PatientID)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    assert [(item.SegmentLabel, item.SegmentedPropertyTypeCodeSequence[0].CodeValue, item.SegmentAlgorithmType) for item in seg.SegmentSequence] == [
        ("Transition zone", "399384005", "SEMIAUTOMATIC"), ("Peripheral zone", "279706003", "SEMIAUTOMATIC")
    ]
    assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "SAMProstateSDG samed"
    orientation = [float(v) for v in seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient]
    assert np.allclose(orientation, np.array(image.GetDirection()).reshape(3, 3)[:, :2].T.ravel(), atol=1e-6)

    frames = seg.pixel_array.reshape(seg.NumberOfFrames, *zones.shape[1:])
    found = np.zeros_like(zones)
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        referenced = source[item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert np.allclose(position, [float(v) for v in referenced.ImagePositionPatient], atol=1e-4)
        index = image.TransformPhysicalPointToIndex(position)[2]  # the slice, from SimpleITK's reading of the NIfTI
        found[index][frame > 0] = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
    np.testing.assert_array_equal(found, zones)  # the edit is in the SEG: no PZ frame on EDITED_SLICE
    assert not (found[EDITED_SLICE] == 2).any()


def test_report_page_and_json_hold_the_measured_volume(workflow, dicom_volume, edited, series, tmp_path):
    segmentation, zones = edited
    _, image, files = series
    measured = workflow.writeReport(dicom_volume, segmentation, tmp_path / "report.png", tmp_path / "report.json", psa=6.2, instanceFile=files.get, method="samed")

    expected = measure_image(zones, image, zonal=True, psa_ng_ml=6.2)
    assert measured.volume_ml == pytest.approx(expected.volume_ml)
    assert measured.volume_ml == pytest.approx(workflow.measurements(dicom_volume, segmentation).volume_ml)  # what the module shows
    report = json.loads((tmp_path / "report.json").read_text(), parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert report["measurements"] == json.loads(json.dumps(expected.to_json()))
    assert set(report["measurements"]["zone_volumes_ml"]) == {"transition zone", "peripheral zone"}
    assert report["series"]["uid"] == pydicom.dcmread(next(iter(files.values())), stop_before_pixels=True).SeriesInstanceUID
    assert report["provenance"]["method"] == "samed" and {model["id"] for model in report["provenance"]["models"]} == {"litemedsam", "samed-litemedsam-runmc"}
    with Image.open(tmp_path / "report.png") as page:
        assert page.size == PAGE_SIZE


def test_a_volume_not_from_dicom_is_refused_with_what_to_do(workflow, scene, tmp_path):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Case00")
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(FIXTURES / "Case00.nii.gz"))
    assert storage.ReadData(node)
    segmentation, _ = bridge.add_label_segments(sitk.GetArrayFromImage(sitk.ReadImage(str(FIXTURES / "Case00_seg.nii.gz"))).astype(bool).astype(np.uint8), node)
    with pytest.raises(InputError, match="was not loaded from DICOM.*DICOM module"):
        workflow.exportDicomSeg(node, segmentation, tmp_path / "seg.dcm", lambda uid: "")
    measured = workflow.writeReport(node, segmentation, reportJson=tmp_path / "report.json")  # the report needs no DICOM
    assert "series" not in json.loads((tmp_path / "report.json").read_text()) and measured.volume_ml > 0
    assert [path.name for path in tmp_path.iterdir()] == ["report.json"]


def test_seg_refuses_a_changed_grid_missing_images_and_the_source_folder(workflow, dicom_volume, edited, series, tmp_path):
    segmentation, _ = edited
    folder, _, files = series
    with pytest.raises(InputError, match="source DICOM images"):
        workflow.exportDicomSeg(dicom_volume, segmentation, folder / "seg.dcm", files.get)
    with pytest.raises(InputError, match="no longer in the DICOM database"):
        workflow.exportDicomSeg(dicom_volume, segmentation, tmp_path / "seg.dcm", lambda uid: "")
    dicom_volume.SetSpacing(np.array(dicom_volume.GetSpacing()) * 2)  # as if resampled
    with pytest.raises(InputError, match="no longer has the voxel grid of its DICOM series"):
        workflow.exportDicomSeg(dicom_volume, segmentation, tmp_path / "seg.dcm", files.get)
    assert not (folder / "seg.dcm").exists() and not any(tmp_path.iterdir())


def test_provenance_names_the_models_chosen_in_the_segment_tab(tmp_path):
    """Shipped models, a user's SAM checkpoint (hashed) and a registered trained coarse network take their places."""
    workflow = ProstateWorkflow(tmp_path / "user")
    shipped = workflow.provenance(method="sammed")
    assert [(model.role, model.id) for model in shipped.models] == [("sam", "litemedsam"), ("coarse", "coarse-resnet18-runmc"), ("method", "sammed-litemedsam-runmc")]
    checkpoint = tmp_path / "my_sam.pth"
    checkpoint.write_bytes(b"weights")
    own = workflow.provenance(checkpointModel(checkpoint, "vit_b"))
    assert (own.models[0].id, own.models[0].sha256) == ("my_sam.pth", hashlib.sha256(b"weights").hexdigest())
    manifest = tmp_path / "run" / "coarse.json"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps({"file": "coarse.pt", "site": "RUNMC", "best_validation_dice": 0.9, "sha256": "ab" * 32}))
    trained = register_trained_model(workflow.trainedModelsFile, "coarse", manifest)
    models = {model.role: (model.id, model.sha256) for model in workflow.provenance(trained.id).models}
    assert models == {"sam": ("litemedsam", default_entry("sam").sha256), "coarse": (trained.id, "ab" * 32)}
