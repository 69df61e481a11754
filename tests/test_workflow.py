"""The module's logic (ProstateWorkflow) as the Slicer widget drives it, against real MRML (slicer-core)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import slicer  # slicer-core, a test requirement: a missing one must fail, never skip

from conftest import DATA, FIXTURES, assert_boxes_near_the_reference, dice, read_mask
from SAMProstateSDGLib.core.errors import InputError
from SAMProstateSDGLib.masks.boxes import Box
from SAMProstateSDGLib.slicerapp import mrml as bridge
from SAMProstateSDGLib.slicerapp.workflow import SAM_MODELS, ProstateWorkflow, checkSegmentationVolume, segmentationVolume

TRAINING_LIMIT_S = 600


@pytest.fixture(scope="module")
def workflow(tmp_path_factory) -> ProstateWorkflow:
    return ProstateWorkflow(tmp_path_factory.mktemp("user"))


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


def read_node(scene, name: str):
    """A fixture volume read by Slicer's own reader."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(FIXTURES / f"{name}.nii.gz"))
    assert storage.ReadData(node)
    return node


@pytest.fixture
def volume_node(scene):
    """P158-020 (an unseen site) in a fresh scene."""
    return read_node(scene, "P158-020")


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return read_mask(FIXTURES / "P158-020_seg.nii.gz")


def segment_labels(segmentation_node, volume_node, name: str) -> np.ndarray:
    segment_id = segmentation_node.GetSegmentation().GetSegmentIdBySegmentName(name)
    assert segment_id, f"no segment named {name!r}"
    return bridge.labels_from_segmentation(segmentation_node, {1: segment_id}, volume_node)


def test_propose_move_segment_as_the_module_test_does(workflow, volume_node, reference):
    rois = workflow.proposeBoxes(volume_node, device="cpu")
    assert rois and all(roi.GetNodeReferenceID(bridge.BOX_VOLUME_REFERENCE) == volume_node.GetID() for roi in rois)
    assert_boxes_near_the_reference(dict(bridge.box_from_roi_node(volume_node, roi) for roi in rois), reference, volume_node.GetSpacing()[:2])
    segmentation = workflow.segment(volume_node, device="cpu")
    first = segment_labels(segmentation, volume_node, "prostate")
    assert dice(first, reference) > 0.8

    moved_slice, _ = bridge.box_from_roi_node(volume_node, rois[0])
    rois[0].SetCenter((np.array(rois[0].GetCenter()) + 8 * bridge.ijk_to_ras(volume_node)[:3, 0]).tolist())
    assert workflow.segment(volume_node, segmentationNode=segmentation, device="cpu") is segmentation
    second = segment_labels(segmentation, volume_node, "prostate")
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1  # updated in place, not added again
    assert (second[moved_slice] != first[moved_slice]).any()
    near = [index for index in range(len(first)) if abs(index - moved_slice) <= 1]  # its neighbours read its logits (z smoothing)
    np.testing.assert_array_equal(np.delete(second, near, 0), np.delete(first, near, 0))

    # the user edits the segment (as the Segment Editor would); Segment again keeps the edit and adds a new segment
    edited = second.copy()
    edited[moved_slice] = 0
    segment_id = segmentation.GetSegmentation().GetSegmentIdBySegmentName("prostate")
    bridge.set_segment_mask(segmentation, segment_id, edited > 0, volume_node)
    rois[0].SetCenter((np.array(rois[0].GetCenter()) - 8 * bridge.ijk_to_ras(volume_node)[:3, 0]).tolist())
    assert workflow.segment(volume_node, segmentationNode=segmentation, device="cpu") is segmentation
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 2
    np.testing.assert_array_equal(segment_labels(segmentation, volume_node, "prostate"), edited)  # the edit is kept
    np.testing.assert_array_equal(segment_labels(segmentation, volume_node, "prostate (2)"), first)  # the box moved back

    # measured (and exported) is the result written last, as it is now: not the edited result beside it, nor a segment
    # of the user's own in the same node (here "rectum", the whole volume); and what made it, not what is chosen now
    rectum = segmentation.GetSegmentation().AddEmptySegment("", "rectum")
    bridge.set_segment_mask(segmentation, rectum, np.ones(first.shape, bool), volume_node)
    voxel_ml = np.prod(volume_node.GetSpacing()) / 1000
    assert workflow.measurements(volume_node, segmentation).volume_ml == pytest.approx((first > 0).sum() * voxel_ml)
    assert workflow.provenance(method="sammed", segmentationNode=segmentation).method == "zero-shot"
    segmentation.GetSegmentation().RemoveSegment(segmentation.GetSegmentation().GetSegmentIdBySegmentName("prostate (2)"))
    with pytest.raises(InputError, match=r"holds 2 segments \(prostate, rectum\): measure or export one whose only segment is the gland"):
        workflow.measurements(volume_node, segmentation)  # the result is gone: which of the others is the gland?


def test_propose_says_when_the_slices_read_in_the_reverse_of_the_header_and_boxes_them_as_the_header_should_have(
    workflow, scene, tmp_path, mislabelled_case,
):
    """P158-021 whole, and a copy with its slices stored in the opposite order under the same header, read by Slicer."""
    mislabelled, mislabelled_reference = mislabelled_case
    nodes = {}
    for name, path in (("stored", DATA / "Prostate158" / "P158-021.nii.gz"), ("reversed", mislabelled)):
        nodes[name] = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        storage.SetFileName(str(path))
        assert storage.ReadData(nodes[name])
    boxed = {name: sorted(bridge.box_from_roi_node(node, roi)[0] for roi in workflow.proposeBoxes(node, device="cpu")) for name, node in nodes.items()}
    assert workflow.orientationNote(nodes["stored"]) is None
    assert "superior and inferior the other way round" in workflow.orientationNote(nodes["reversed"])
    assert boxed["reversed"] == sorted(len(mislabelled_reference) - 1 - index for index in boxed["stored"])
    # the report of a segmentation on each says so too (the reference as the segmentation: only the warning matters here)
    reference = read_mask(DATA / "Prostate158" / "P158-021_seg.nii.gz")
    for name, labels in (("stored", reference), ("reversed", mislabelled_reference)):
        segmentation, _ = bridge.add_label_segments(labels.astype(np.uint8), nodes[name])
        workflow.writeReport(nodes[name], segmentation, reportJson=tmp_path / f"{name}.json")
    assert "warnings" not in json.loads((tmp_path / "stored.json").read_text())
    assert "superior and inferior the other way round" in json.loads((tmp_path / "reversed.json").read_text())["warnings"][0]


def test_boxes_are_coloured_by_confidence_and_the_views_jump_to_a_slice_to_check(workflow, volume_node, reference):
    rois = workflow.proposeBoxes(volume_node, device="cpu")
    off_gland = rois[len(rois) // 2]  # a box moved off the gland onto background: SAM and the coarse mask disagree there
    moved_slice = bridge.box_from_roi_node(volume_node, off_gland)[0]
    rows, columns = reference.shape[1:]
    bridge.set_roi_box(volume_node, off_gland, moved_slice, Box(2, 2, columns / 6, rows / 6))
    assert workflow.slicesToCheck(volume_node, device="cpu") == []  # nothing segmented yet
    workflow.segment(volume_node, device="cpu")

    flags = {bridge.box_from_roi_node(volume_node, roi)[0]: roi.GetAttribute(bridge.BOX_FLAGGED_ATTRIBUTE) for roi in rois}
    assert flags[moved_slice] == "1" and "0" in flags.values()
    to_check = workflow.slicesToCheck(volume_node, device="cpu")
    assert [index for index, confidence in to_check if confidence.segmented] == sorted(index for index, flag in flags.items() if flag == "1")
    assert all(confidence.flagged and index not in flags for index, confidence in to_check if not confidence.segmented)  # past the boxes
    for roi in rois:
        expected = bridge.CHECK_COLOUR if roi.GetAttribute(bridge.BOX_FLAGGED_ATTRIBUTE) == "1" else bridge.CONFIDENT_COLOUR
        assert roi.GetDisplayNode().GetSelectedColor() == pytest.approx(expected)
    assert off_gland.GetDescription().startswith("check this slice: SAM's predicted IoU")

    red = volume_node.GetScene().AddNewNodeByClass("vtkMRMLSliceNode")
    red.SetOrientationToAxial()
    workflow.jumpToSlice(volume_node, moved_slice)
    slice_centre = (bridge.ijk_to_ras(volume_node) @ [0, 0, moved_slice, 1.0])[2]
    assert slicer.util.arrayFromVTKMatrix(red.GetSliceToRAS())[2, 3] == pytest.approx(slice_centre, abs=1e-3)
    workflow.forgetVolumes({volume_node.GetID()})
    assert workflow.slicesToCheck(volume_node, device="cpu") == []


def test_the_views_jump_to_a_slice_past_a_box_moved_off_the_volume(volume_node):
    columns, rows, slices = volume_node.GetImageData().GetDimensions()
    box = Box(10, 10, columns / 3, rows / 3)  # away from the slice's centre
    off, kept = bridge.roi_nodes_from_boxes(volume_node, {0: box, slices - 1: box})
    off.SetCenter((np.array(off.GetCenter()) + 1000 * bridge.ijk_to_ras(volume_node)[:3, 0]).tolist())  # dragged far beside the volume
    with pytest.raises(InputError, match="does not cover any pixels"):
        bridge.box_from_roi_node(volume_node, off)
    red = volume_node.GetScene().AddNewNodeByClass("vtkMRMLSliceNode")
    red.SetOrientationToAxial()
    ProstateWorkflow.jumpToSlice(volume_node, slices - 1)
    assert slicer.util.arrayFromVTKMatrix(red.GetSliceToRAS())[:3, 3] == pytest.approx(bridge.roi_centre_ras(kept), abs=1e-3)
    ProstateWorkflow.jumpToSlice(volume_node, 0)  # its box is off the volume: the slice's centre
    centre = bridge.ijk_to_ras(volume_node) @ [(columns - 1) / 2, (rows - 1) / 2, 0, 1.0]
    assert slicer.util.arrayFromVTKMatrix(red.GetSliceToRAS())[:3, 3] == pytest.approx(centre[:3], abs=1e-3)


def test_a_segmentation_made_on_another_volume_is_neither_written_nor_measured_nor_reported_on_this_one(scene, tmp_path):
    """The output segmentation of P158-020 handed over with Case29 (the module's input volume changed): refused before anything
    is computed or written, with one message; on its own volume it is measured, and a node naming no volume is taken."""
    workflow = ProstateWorkflow(tmp_path)
    first, second = read_node(scene, "P158-020"), read_node(scene, "Case29")
    segmentation, _ = bridge.add_label_segments(read_mask(FIXTURES / "P158-020_seg.nii.gz").astype(np.uint8), first)
    assert segmentationVolume(segmentation) is first
    assert workflow.measurements(first, segmentation).volume_ml > 1.0
    refusal = "P158-020 prostate is the segmentation of P158-020, not of Case29: choose P158-020 as the input volume"
    with pytest.raises(InputError, match=refusal):
        workflow.measurements(second, segmentation)
    with pytest.raises(InputError, match=refusal):
        workflow.writeReport(second, segmentation, tmp_path / "report.png", tmp_path / "report.json")
    with pytest.raises(InputError, match=refusal):
        workflow.segment(second, segmentationNode=segmentation, device="cpu")
    clicks = workflow.clicksNode(second)
    columns, rows, slices = second.GetImageData().GetDimensions()
    clicks.AddControlPoint((bridge.ijk_to_ras(second) @ [columns / 2, rows / 2, slices // 2, 1.0])[:3].tolist())
    with pytest.raises(InputError, match=refusal):
        workflow.refineWithPoints(second, clicks, segmentation, device="cpu")
    with pytest.raises(InputError, match=refusal):
        workflow.placeClick(second, clicks, 0, inside=True, segmentationNode=segmentation, device="cpu")
    assert not list(tmp_path.glob("report.*")) and workflow.cachedVolumeIDs() == set()
    assert segmentation.GetSegmentation().GetNumberOfSegments() == 1
    checkSegmentationVolume(second, scene.AddNewNodeByClass("vtkMRMLSegmentationNode"))  # the user's own, on no volume


def test_a_label_map_or_a_constant_volume_is_refused_before_any_box_is_proposed(workflow, scene):
    """A mask loaded as a scalar volume rather than a label map is refused, as the CLI refuses it."""
    label_map = read_node(scene, "P158-020_seg")
    with pytest.raises(InputError, match="P158-020_seg holds only the values 0, 1, 2: it is a label map"):
        workflow.proposeBoxes(label_map)
    constant = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "blank")
    slicer.util.updateVolumeFromArray(constant, np.zeros((4, 64, 64), np.int16))
    with pytest.raises(InputError, match="blank is constant"):
        workflow.proposeBoxes(constant)
    assert not bridge.box_roi_nodes(label_map) and not bridge.box_roi_nodes(constant)


def test_segment_without_boxes_says_so_and_writes_no_empty_segment(workflow, volume_node):
    scene = volume_node.GetScene()
    with pytest.raises(InputError, match="P158-020 has no boxes to segment in: press Propose boxes, or Add box, first"):
        workflow.segment(volume_node, device="cpu")
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    rois = workflow.proposeBoxes(volume_node, device="cpu")
    for roi in rois:  # the user deleted every proposed box
        scene.RemoveNode(roi)
    with pytest.raises(InputError, match="no boxes"):
        workflow.segment(volume_node, device="cpu")
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


def test_a_click_refines_its_slice_with_the_slice_box(workflow, volume_node, reference):
    index = int(np.argmax(reference.reshape(len(reference), -1).sum(1)))
    rows, columns = np.nonzero(reference[index])
    points = volume_node.GetScene().AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "clicks")
    points.AddControlPoint((bridge.ijk_to_ras(volume_node) @ [columns.mean(), rows.mean(), index, 1.0])[:3].tolist())
    with pytest.raises(InputError, match=f"add a box on slice {index}"):
        workflow.refineWithPoints(volume_node, points, device="cpu")  # LiteMedSAM ignores clicks without a box
    workflow.proposeBoxes(volume_node, device="cpu")
    segmentation = workflow.refineWithPoints(volume_node, points, device="cpu")
    labels = segment_labels(segmentation, volume_node, "prostate")
    assert dice(labels[index], reference[index]) > 0.8 and not np.delete(labels, index, 0).any()


def test_the_segmentation_the_module_makes_is_shown_in_3d_and_follows_a_click(workflow, volume_node, reference):
    """Slicer's Segmentations logic registers the closed-surface conversion when it gets the scene
    (vtkSlicerSegmentationsModuleLogic::RegisterNodes, Modules/Loadable/Segmentations/Logic/
    vtkSlicerSegmentationsModuleLogic.cxx @0110286); slicer-core has the logic but no application to make it."""
    import vtk

    segmentationsLogic = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentationsLogic.SetMRMLScene(volume_node.GetScene())
    workflow.proposeBoxes(volume_node, device="cpu")
    segmentation = workflow.segment(volume_node, device="cpu")
    segmentId = segmentation.GetSegmentation().GetSegmentIdBySegmentName("prostate")
    surface = vtk.vtkPolyData()
    assert segmentation.GetClosedSurfaceRepresentation(segmentId, surface) and surface.GetNumberOfPoints() > 0
    before = surface.GetBounds()
    index = int(np.argmax(reference.reshape(len(reference), -1).sum(1)))
    clicks = workflow.clicksNode(volume_node)
    clicks.AddControlPoint((bridge.ijk_to_ras(volume_node) @ [5.0, 5.0, index, 1.0])[:3].tolist())  # far outside the gland: grows the box
    segmentation = workflow.placeClick(volume_node, clicks, 0, inside=True, segmentationNode=segmentation, device="cpu")
    surface = vtk.vtkPolyData()
    segmentation.GetClosedSurfaceRepresentation(segmentId, surface)
    assert surface.GetNumberOfPoints() > 0 and surface.GetBounds() != before


def test_a_slice_whose_clicks_were_deleted_goes_back_to_its_box_with_refine(workflow, volume_node, reference):
    """The interactive decoder: a click outside the gland's middle changes its slice; deleting the click and refining
    gives back the box's own segmentation, to the voxel; the other slices are not touched."""
    workflow.proposeBoxes(volume_node, device="cpu")
    segmentation = workflow.segment(volume_node, device="cpu", method="interactive")
    automatic = segment_labels(segmentation, volume_node, "prostate")
    index = int(np.argmax(reference.reshape(len(reference), -1).sum(1)))
    rows, columns = np.nonzero(reference[index])
    clicks = workflow.clicksNode(volume_node)
    clicks.AddControlPoint((bridge.ijk_to_ras(volume_node) @ [columns.mean(), rows.mean(), index, 1.0])[:3].tolist())
    segmentation = workflow.placeClick(volume_node, clicks, 0, inside=False, segmentationNode=segmentation, device="cpu", method="interactive")
    clicked = segment_labels(segmentation, volume_node, "prostate")
    assert not np.array_equal(clicked[index], automatic[index]) and np.array_equal(np.delete(clicked, index, 0), np.delete(automatic, index, 0))
    clicks.RemoveAllControlPoints()
    segmentation = workflow.refineWithPoints(volume_node, clicks, segmentation, device="cpu", method="interactive")
    assert np.array_equal(segment_labels(segmentation, volume_node, "prostate"), automatic)


def test_a_placed_click_outside_the_volume_is_refused_and_the_point_following_the_mouse_is_no_click(workflow, volume_node):
    clicks = workflow.clicksNode(volume_node)
    assert workflow.clicksNode(volume_node, clicks) is clicks  # the chosen list is kept
    display = clicks.GetDisplayNode()
    assert display.GetSelectedColor() == bridge.INSIDE_COLOUR and display.GetColor() == bridge.OUTSIDE_COLOUR
    clicks.AddControlPoint((bridge.ijk_to_ras(volume_node) @ [10.0, 10.0, 50.0, 1.0])[:3].tolist())  # slice 50 of 24
    with pytest.raises(InputError, match="the click lies outside P158-020; click on one of its slices"):
        workflow.placeClick(volume_node, clicks, 0, inside=False, device="cpu")
    assert clicks.GetNumberOfControlPoints() == 0  # the refused click leaves no point behind to be applied later
    position = (bridge.ijk_to_ras(volume_node) @ [100.0, 100.0, 2.0, 1.0])[:3].tolist()
    clicks.AddControlPoint(position)
    assert list(bridge.point_prompts(volume_node, clicks)) == [2]
    clicks.SetNthControlPointPositionWorld(0, position, slicer.vtkMRMLMarkupsNode.PositionPreview)  # place mode's point under the mouse
    assert bridge.point_prompts(volume_node, clicks) == {}


def test_a_click_with_the_interactive_decoder_on_a_slice_without_a_box_starts_from_the_coarse_region_under_it(workflow, volume_node, reference):
    """Boxes proposed, the smallest slice's ROI deleted by the user, a click inside the gland there: the coarse network
    sees gland under the click, so the interactive decoder segments the slice from that region's box (``start_box``,
    not the nearest ROI's), and shows that box as the slice's ROI."""
    from SAMProstateSDGLib.masks.boxes import borrowed_box, start_box

    assert workflow.clickMode(device="cpu", method="interactive").startswith("Clicks are points")
    assert workflow.clickMode(device="cpu").endswith("(Method 'Interactive decoder (box + clicks), trained on RUNMC' makes them points).")
    rois = {bridge.box_from_roi_node(volume_node, roi)[0]: roi for roi in workflow.proposeBoxes(volume_node, device="cpu")}
    index = min(rois, key=lambda key: reference[key].sum())
    volume_node.GetScene().RemoveNode(rois[index])
    remaining = dict(bridge.box_from_roi_node(volume_node, roi) for roi in bridge.box_roi_nodes(volume_node))
    rows, columns = np.nonzero(reference[index])
    points = volume_node.GetScene().AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "clicks")
    points.AddControlPoint((bridge.ijk_to_ras(volume_node) @ [columns.mean(), rows.mean(), index, 1.0])[:3].tolist())
    segmentation = workflow.refineWithPoints(volume_node, points, device="cpu", method="interactive")
    shown = dict(bridge.box_from_roi_node(volume_node, roi) for roi in bridge.box_roi_nodes(volume_node))
    prepared = workflow.session(volume_node, device="cpu", method="interactive").volume  # what the click was decoded on
    assert prepared.coarse is not None, "proposing the boxes left the coarse probabilities with the volume"
    click = ((columns.mean(), rows.mean()),)
    expected = start_box(remaining, index, click, (1,), reference.shape[1:], prepared.coarse[index], prepared.spacing_xy)
    assert expected is not None and not np.allclose(expected.as_tuple(), borrowed_box(remaining, index, click, (1,), reference.shape[1:]).as_tuple(), atol=1.0)
    assert shown.keys() == remaining.keys() | {index}
    assert np.allclose(shown[index].as_tuple(), expected.as_tuple(), atol=1.0)
    assert dice(segment_labels(segmentation, volume_node, "prostate")[index], reference[index]) > 0.8


@pytest.mark.parametrize("method", ["desam-box", "samed"])
def test_methods_that_prompt_themselves_need_no_boxes(workflow, scene, method):
    """On Case29 (NCI-ISBI, not trained on): on the unseen site these methods are still weak (README)."""
    volume_node = read_node(scene, "Case29")
    reference = read_mask(FIXTURES / "Case29_seg.nii.gz")
    assert workflow.slicesToCheck(volume_node, device="cpu", method=method) == []  # nothing segmented yet
    segmentation = workflow.segment(volume_node, device="cpu", method=method)
    assert not bridge.box_roi_nodes(volume_node)
    session = workflow.session(volume_node, device="cpu", method=method)
    expected = workflow.segmenter(device="cpu", method=method).base.slice_confidence(session.volume, session.labels)
    assert expected and workflow.slicesToCheck(volume_node, device="cpu", method=method) == [
        (index, confidence) for index, confidence in expected.items() if confidence.flagged
    ]  # every method tells the user where to look
    if method == "samed":
        zones = {name: segment_labels(segmentation, volume_node, name) for name in ("transition zone", "peripheral zone")}
        assert dice(zones["transition zone"] | zones["peripheral zone"], reference) > 0.7
        points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "clicks")
        points.AddControlPoint(list(volume_node.GetOrigin()))
        with pytest.raises(InputError, match="zones"):
            workflow.refineWithPoints(volume_node, points, segmentation, device="cpu", method=method)
    else:
        assert dice(segment_labels(segmentation, volume_node, "prostate"), reference) > 0.7


def test_a_run_trained_from_the_logic_is_registered_and_selectable(workflow, small_runmc, volume_node, sam_engine):
    import torch

    from SAMProstateSDGLib.apps.training_process import trained_models
    from SAMProstateSDGLib.io.volume_io import read_volume
    from SAMProstateSDGLib.modeling.coarse_net import CoarseSegmenter
    from SAMProstateSDGLib.pipeline.segmenter import ProstateSegmenter

    workflow.startTraining(small_runmc, "RUNMC", "coarse", 1, device="cpu", maxCases=2)
    with pytest.raises(RuntimeError, match="already in progress"):
        workflow.startTraining(small_runmc, "RUNMC", "coarse", 1, device="cpu", maxCases=2)
    lines, deadline = [], time.monotonic() + TRAINING_LIMIT_S
    while workflow.isTraining() and time.monotonic() < deadline:
        lines += workflow.pollTraining().lines
        time.sleep(0.2)
    lines += workflow.pollTraining().lines
    assert workflow.trainingError is None, lines
    assert any(line.startswith("Registered the trained model") for line in lines)
    # starting again replaces that run only when asked (the module asks the user first), or continues it
    again = workflow.trainingRequest(small_runmc, "RUNMC", "coarse", 1, device="cpu", maxCases=2)
    assert again.previous_run() == ["coarse.pt", "coarse.json", "last_state.pt"] and "--overwrite" not in again.command_line()
    assert "--overwrite" in workflow.trainingRequest(small_runmc, "RUNMC", "coarse", 1, device="cpu", overwrite=True).command_line()
    (model_id, title), = workflow.trainedModelTitles().items()
    assert "coarse trained on RUNMC" in title
    assert workflow.baseSegmenter(model_id, "cpu").coarse is not workflow.baseSegmenter(SAM_MODELS[0], "cpu").coarse
    # a trained coarse network proposes the boxes of a box-prompted method, and is refused by one that prompts itself
    assert workflow.segmenter(model_id, "cpu", "sammed").base.coarse is workflow.baseSegmenter(model_id, "cpu").coarse
    with pytest.raises(InputError, match="coarse network, which proposes boxes"):
        workflow.segmenter(model_id, "cpu", "samed")
    # the boxes are the trained network's, as the pipeline proposes them with that checkpoint (not the shipped one's)
    trained = trained_models(workflow.trainedModelsFile)[model_id]
    pipeline = ProstateSegmenter(sam_engine, CoarseSegmenter.from_checkpoint(trained.path, torch.device("cpu"), trained.sha256))
    expected = pipeline.propose_boxes(pipeline.prepare(read_volume(FIXTURES / "P158-020.nii.gz")))
    rois = workflow.proposeBoxes(volume_node, model=model_id, device="cpu")
    proposed = dict(bridge.box_from_roi_node(volume_node, roi) for roi in rois)
    assert proposed.keys() == expected.keys()
    for index, box in expected.items():
        assert np.allclose(proposed[index].as_tuple(), box.as_tuple(), atol=1e-3), index


def test_a_trained_decoder_proposes_boxes_with_the_method_it_was_trained_for(tmp_path, volume_node, reference):
    """A decoder trained in the Training tab (here the shipped SAMMed decoder, registered as a finished run registers
    it) is chosen with its method: Propose boxes then works (it used to build SAM zero-shot's session and refuse)."""
    from SAMProstateSDGLib.apps.training_process import manifest_beside, register_trained_model
    from SAMProstateSDGLib.core.catalog import default_entry

    workflow = ProstateWorkflow(tmp_path)
    trained = register_trained_model(workflow.trainedModelsFile, "sammed", manifest_beside(default_entry("decoder").path)).id
    with pytest.raises(InputError, match="Choose the method it was trained for"):
        workflow.proposeBoxes(volume_node, model=trained, device="cpu")  # with SAM zero-shot, which it does not fit
    assert not bridge.box_roi_nodes(volume_node)
    assert workflow.proposeBoxes(volume_node, model=trained, device="cpu", segmentationMethod="sammed")
    segmentation = workflow.segment(volume_node, model=trained, device="cpu", method="sammed")
    assert dice(segment_labels(segmentation, volume_node, "prostate"), reference > 0) > 0.8


@pytest.mark.parametrize("cuda, mps, told", [(False, False, True), (True, False, False), (False, True, False)])
def test_the_user_is_told_when_the_networks_run_on_the_cpu(workflow, monkeypatch, cuda, mps, told):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    note = workflow.deviceNote("auto")
    assert (note is not None and "running on the CPU" in note) if told else note is None
    assert workflow.deviceNote("cpu") is None  # chosen on purpose: nothing to tell


def test_a_users_own_sam_checkpoint_is_used_and_a_wrong_type_refused(workflow, volume_node):
    from SAMProstateSDGLib.core.catalog import default_entry
    from SAMProstateSDGLib.slicerapp.workflow import checkpointModel

    own = checkpointModel(default_entry("sam").path, "litemedsam")  # any file the user picks, here the LiteMedSAM weights
    assert workflow.proposeBoxes(volume_node, model=own, device="cpu")
    assert workflow.segmenter(own, "cpu") is not workflow.segmenter(SAM_MODELS[0], "cpu")
    with pytest.raises(InputError, match="wrong keys"):
        workflow.segmenter(checkpointModel(default_entry("sam").path, "vit_b"), "cpu")


def hold_the_gil_like_qt_idling(seconds: float) -> None:
    """Block in a C call that keeps the GIL, as PythonQt's main thread does while Qt waits for events."""
    import ctypes

    ctypes.PyDLL(None).usleep(int(seconds * 1e6))  # PyDLL: the GIL is not released during the call


def test_boxed_slices_encode_between_timer_ticks_while_the_main_thread_holds_the_gil(workflow, volume_node):
    import threading

    threads = threading.active_count()
    rois = workflow.proposeBoxes(volume_node, device="cpu")
    assert threading.active_count() == threads  # no worker thread: it would not run inside Slicer
    encoded = workflow.session(volume_node, device="cpu").volume.encoded
    boxed = sorted(bridge.box_from_roi_node(volume_node, roi)[0] for roi in rois)
    assert not set(boxed) & encoded.embeddings.keys()

    ticks = 0
    while True:  # Qt's event loop: idle with the GIL held, then the timer's slot runs on the main thread
        hold_the_gil_like_qt_idling(0.02)
        ticks += 1
        if not workflow.encodeNextSlice():
            break
    assert set(boxed) <= encoded.embeddings.keys() and ticks == len(boxed)


def test_a_removed_volume_drops_its_cached_session(workflow, volume_node):
    workflow.proposeBoxes(volume_node, device="cpu")
    assert volume_node.GetID() in workflow.cachedVolumeIDs()
    volume_node.GetScene().RemoveNode(volume_node)
    assert volume_node.GetID() not in workflow.cachedVolumeIDs()
    assert not workflow.encodeNextSlice()  # nothing left to encode for it either


@pytest.mark.parametrize("folder", [".", "", "missing"])
def test_training_needs_a_data_folder_with_cases(workflow, tmp_path, folder):
    data = tmp_path / folder if folder == "missing" else Path(folder)
    with pytest.raises(InputError, match="training data"):
        workflow.startTraining(data, "RUNMC", "coarse", 1, device="cpu")
    assert not workflow.isTraining()


def test_the_segmentation_is_measured_as_slicer_holds_it(workflow, volume_node):
    """The module's numbers come from the segmentation node (edits included) and match the label file's."""
    import SimpleITK as sitk

    from SAMProstateSDGLib.core.labels import ZONE_NAMES
    from SAMProstateSDGLib.io.measurements import measure_image
    from SAMProstateSDGLib.methods.registry import ZONE_SEGMENTS

    zones = sitk.GetArrayFromImage(sitk.ReadImage(str(FIXTURES / "P158-020_seg.nii.gz"))).astype(np.uint8)
    node, _ = bridge.add_label_segments(zones, volume_node, None, ZONE_SEGMENTS)
    measured = workflow.measurements(volume_node, node, psa=6.0)
    expected = measure_image(zones, sitk.ReadImage(str(FIXTURES / "P158-020.nii.gz")), zonal=True, psa_ng_ml=6.0)
    assert measured.volume_ml == pytest.approx(expected.volume_ml, rel=1e-6) and measured.volume_ml > 1.0
    for name in ZONE_NAMES.values():
        assert measured.zone_volumes_ml[name] == pytest.approx(expected.zone_volumes_ml[name], rel=1e-6)
    diameters = ("transverse_mm", "anteroposterior_mm", "craniocaudal_mm")
    assert [getattr(measured, name) for name in diameters] == pytest.approx([getattr(expected, name) for name in diameters], abs=1e-6)
    assert "Gland volume (from the contour)" in measured.as_text()


def test_the_encoder_backend_chosen_in_the_module_is_used_and_a_change_drops_the_loaded_models(workflow):
    workflow.setEncoderBackend("torch")
    base = workflow.baseSegmenter(SAM_MODELS[0], "cpu")
    assert base.sam.encoder_backend.name == "torch"
    workflow.setEncoderBackend("torch")
    assert workflow.baseSegmenter(SAM_MODELS[0], "cpu") is base  # the same choice keeps the loaded models
    with pytest.raises(InputError, match="unknown encoder backend 'tensorrt'"):
        workflow.setEncoderBackend("tensorrt")
    workflow.setEncoderBackend("auto")
    assert workflow.encoderBackend == "auto" and workflow.baseSegmenter(SAM_MODELS[0], "cpu") is not base
