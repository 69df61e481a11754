"""The MRML bridge against real MRML (the slicer-core package) and the real prostate fixtures.

Volumes are read by Slicer's own reader (vtkMRMLVolumeArchetypeStorageNode), so the expected
geometry does not come from the code under test. "oblique" is Case00 as acquired; "flipped" is the
same voxels with its first two axes negated, written out and read back. "left-handed" negates only
the first axis; Slicer's reader would reverse the slice order of such a file to make it
right-handed, so that volume node is made from the array by the bridge and checked point by point.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicer  # slicer-core, a test requirement: a missing one must fail, never skip

from conftest import FIXTURES, dice, read_mask
from SAMProstateSDGLib.core.errors import InputError
from SAMProstateSDGLib.io.boxes_json import LPS_TO_RAS, boxes_to_json
from SAMProstateSDGLib.masks.boxes import Box, boxes_from_labels
from SAMProstateSDGLib.methods.registry import ZONE_SEGMENTS
from SAMProstateSDGLib.slicerapp import mrml as bridge

AXIS_SIGNS = {"oblique": (1.0, 1.0, 1.0), "flipped": (-1.0, -1.0, 1.0), "left-handed": (-1.0, 1.0, 1.0)}


def read_with_slicer(scene, path: Path, name: str):
    """A volume node filled by Slicer's own file reader."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node), f"Slicer could not read {path}"
    return node


@pytest.fixture(scope="module")
def volume_files(tmp_path_factory) -> dict[str, Path]:
    """The oblique fixture and its copies with negated axes, as files."""
    image = sitk.ReadImage(str(FIXTURES / "Case00.nii.gz"))
    folder = tmp_path_factory.mktemp("volumes")
    files = {}
    for name, signs in AXIS_SIGNS.items():
        copy = sitk.Image(image)
        copy.SetDirection((np.array(image.GetDirection()).reshape(3, 3) @ np.diag(signs)).ravel().tolist())
        files[name] = folder / f"{name}.nrrd"
        sitk.WriteImage(copy, str(files[name]))
    return files


@pytest.fixture
def scene():
    return slicer.vtkMRMLScene()


@pytest.fixture(params=list(AXIS_SIGNS))
def loaded(request, volume_files, scene):
    """(volume node, the same file read by SimpleITK) for each geometry."""
    image = sitk.ReadImage(str(volume_files[request.param]))
    if request.param == "left-handed":
        return bridge.volume_node_from_image(image, scene, request.param), image
    return read_with_slicer(scene, volume_files[request.param], request.param), image


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return read_mask(FIXTURES / "Case00_seg.nii.gz").astype(np.uint8)


def ijk_to_ras_from_image(image: sitk.Image, index: tuple[float, float, float]) -> np.ndarray:
    return np.array(image.TransformContinuousIndexToPhysicalPoint(index)) * LPS_TO_RAS


def assert_same_geometry(first: sitk.Image, second: sitk.Image) -> None:
    assert first.GetSize() == second.GetSize()
    np.testing.assert_allclose(first.GetSpacing(), second.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(first.GetOrigin(), second.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(first.GetDirection(), second.GetDirection(), atol=1e-6)


def assert_same_boxes(actual: dict[int, Box], expected: dict[int, Box]) -> None:
    assert sorted(actual) == sorted(expected)
    for index, box in expected.items():
        np.testing.assert_allclose(actual[index].as_tuple(), box.as_tuple(), atol=1e-3, err_msg=f"slice {index}")


# Volumes


def test_volume_node_to_image_keeps_voxels_and_geometry(loaded):
    node, expected = loaded
    image = bridge.image_from_volume_node(node)
    assert_same_geometry(image, expected)
    assert image.GetPixelID() == expected.GetPixelID()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(expected))


def test_image_to_volume_node_keeps_every_voxel_in_place(loaded, scene):
    _, image = loaded
    node = bridge.volume_node_from_image(image, scene, "from image")
    for index in [(0, 0, 0), (319, 0, 3), (17.5, 250.25, 2)]:
        np.testing.assert_allclose(bridge.ijk_to_ras(node) @ [*index, 1], [*ijk_to_ras_from_image(image, index), 1], atol=1e-4)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(node), sitk.GetArrayFromImage(image))
    assert_same_geometry(bridge.image_from_volume_node(node), image)


def test_transformed_volume_is_refused(loaded, scene):
    node, _ = loaded
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    node.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(InputError, match="harden"):
        bridge.image_from_volume_node(node)


# Boxes <-> ROI nodes


def test_boxes_round_trip_through_roi_nodes(loaded, reference):
    node, _ = loaded
    boxes = boxes_from_labels(reference) | {1: Box(3.0, 4.5, 310.25, 300.0)}
    rois = bridge.roi_nodes_from_boxes(node, boxes)
    assert [roi.GetName() for roi in rois] == [f"box slice {index}" for index in sorted(boxes)]
    assert [roi.GetAttribute(bridge.BOX_SLICE_ATTRIBUTE) for roi in rois] == [str(index) for index in sorted(boxes)]
    assert all(roi.GetNodeReferenceID(bridge.BOX_VOLUME_REFERENCE) == node.GetID() for roi in rois)
    assert_same_boxes(bridge.boxes_from_roi_nodes(node, rois), boxes)


def test_roi_corners_are_the_boxes_json_ras_corners(loaded, reference):
    node, image = loaded
    boxes = boxes_from_labels(reference)
    rois = bridge.roi_nodes_from_boxes(node, boxes)
    for entry, roi in zip(boxes_to_json(boxes, image)["boxes"], rois):
        center, size = np.array(roi.GetCenter()), np.array(roi.GetSize())
        x_axis, y_axis = np.zeros(3), np.zeros(3)
        roi.GetXAxisWorld(x_axis)
        roi.GetYAxisWorld(y_axis)
        offset = x_axis * size[0] / 2 + y_axis * size[1] / 2
        np.testing.assert_allclose(center - offset, entry["ras"][0], atol=1e-3)
        np.testing.assert_allclose(center + offset, entry["ras"][1], atol=1e-3)


def test_roi_edits_are_picked_up_and_other_rois_left_alone(loaded, reference, scene):
    node, image = loaded
    boxes = {index: box for index, box in boxes_from_labels(reference).items() if index != 2}
    rois = bridge.roi_nodes_from_boxes(node, boxes)
    scene.RemoveNode(rois[0])  # the user deletes the box on slice 0
    added = bridge.add_box_roi_node(node, ijk_to_ras_from_image(image, (160.0, 150.0, 2)))  # "Add box" on slice 2
    crop = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "Crop Volume ROI")  # the user's own ROI over the volume
    crop.SetCenter(ijk_to_ras_from_image(image, (160.0, 150.0, 1)).tolist())
    crop.SetSize(50.0, 50.0, 20.0)

    found = bridge.box_roi_nodes(node)

    assert added in found and crop not in found and rois[0] not in found
    assert sorted(bridge.boxes_from_roi_nodes(node, found)) == sorted(set(boxes) - {0} | {2})
    rows, columns = slicer.util.arrayFromVolume(node).shape[1:]
    added_box = bridge.boxes_from_roi_nodes(node, [added])[2]
    np.testing.assert_allclose([(added_box.x0 + added_box.x1) / 2, (added_box.y0 + added_box.y1) / 2], [160.0, 150.0], atol=0.01)
    np.testing.assert_allclose([added_box.x1 - added_box.x0, added_box.y1 - added_box.y0], [columns / 3, rows / 3], atol=0.01)


def test_listing_boxes_keeps_no_reference_to_the_scene_nodes(loaded):
    node, _ = loaded
    roi = bridge.roi_nodes_from_boxes(node, {0: Box(10.0, 10.0, 20.0, 20.0)})[0]
    before = roi.GetReferenceCount()
    for _ in range(3):
        assert bridge.box_roi_nodes(node) == [roi]
    assert roi.GetReferenceCount() == before  # each GetNodesByClass collection is released


def test_roi_moved_to_another_slice_follows_its_geometry(loaded):
    node, _ = loaded
    first, second = bridge.roi_nodes_from_boxes(node, {0: Box(50.0, 60.0, 90.0, 100.0), 1: Box(50.0, 60.0, 90.0, 100.0)})
    normal = bridge.ijk_to_ras(node)[:3, 2]
    second.SetCenter((np.array(second.GetCenter()) + 2 * normal).tolist())  # slice 1 -> slice 3
    assert sorted(bridge.boxes_from_roi_nodes(node, [first, second])) == [0, 3]
    first.SetCenter((np.array(first.GetCenter()) + 3 * normal).tolist())  # slice 0 -> slice 3
    with pytest.raises(InputError, match="both on slice 3"):
        bridge.boxes_from_roi_nodes(node, [first, second])


def test_roi_outside_the_volume_is_refused(loaded):
    node, _ = loaded
    roi = bridge.roi_nodes_from_boxes(node, {0: Box(10.0, 10.0, 20.0, 20.0)})[0]
    roi.SetCenter((np.array(roi.GetCenter()) + 1000 * bridge.ijk_to_ras(node)[:3, 0]).tolist())
    with pytest.raises(InputError, match="does not cover"):
        bridge.box_from_roi_node(node, roi)


# Point prompts


def test_point_list_becomes_per_slice_prompts(loaded, scene):
    node, image = loaded
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    for index in [(100.0, 120.0, 2), (150.5, 130.0, 2), (40.0, 60.0, 0), (10.0, 10.0, 9)]:
        points.AddControlPoint(ijk_to_ras_from_image(image, index).tolist())
    points.SetNthControlPointSelected(1, False)  # unselected = negative click

    prompts = bridge.point_prompts(node, points)

    assert sorted(prompts) == [0, 2]  # the point on slice 9 lies outside the 4-slice volume
    np.testing.assert_allclose(prompts[2].points, [(100.0, 120.0), (150.5, 130.0)], atol=1e-4)
    assert prompts[2].point_labels == (1, 0)
    np.testing.assert_allclose(prompts[0].points, [(40.0, 60.0)], atol=1e-4)
    box = Box(90.0, 100.0, 200.0, 180.0)
    assert bridge.with_box(prompts[2], box).box == box.as_tuple()


# Labels <-> segmentation node


def export_with_slicer(scene, segmentation, segment_ids: list[str], volume):
    """Segments exported by Slicer's own logic into a labelmap node on the volume's geometry."""
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentation, segment_ids, labelmap, volume)
    return labelmap


def zonal_labels(reference: np.ndarray) -> np.ndarray:
    """A two-label array from the reference: the gland's left columns 1, its right columns 2."""
    labels = reference.astype(np.uint8).copy()
    labels[:, :, 165:][labels[:, :, 165:] > 0] = 2
    return labels


def test_labels_become_segments_on_the_source_geometry(loaded, reference, scene):
    node, _ = loaded
    labels = zonal_labels(reference)
    segmentation, segment_ids = bridge.add_label_segments(labels, node, segments=ZONE_SEGMENTS)

    names = [segmentation.GetSegmentation().GetSegment(segment_ids[label]).GetName() for label in (1, 2)]
    assert names == ["transition zone", "peripheral zone"]
    labelmap = export_with_slicer(scene, segmentation, [segment_ids[1], segment_ids[2]], node)
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(labelmap), labels)
    np.testing.assert_allclose(bridge.ijk_to_ras(labelmap), bridge.ijk_to_ras(node), atol=1e-6)
    np.testing.assert_array_equal(bridge.labels_from_segmentation(segmentation, segment_ids, node), labels)


def test_existing_segment_is_not_overwritten(loaded, reference):
    node, _ = loaded
    first, shifted = reference.astype(np.uint8), np.roll(reference, 7, axis=2).astype(np.uint8)
    segmentation, first_ids = bridge.add_label_segments(first, node)
    _, second_ids = bridge.add_label_segments(shifted, node, segmentation)

    segments = segmentation.GetSegmentation()
    assert segments.GetNumberOfSegments() == 2
    assert segments.GetSegment(second_ids[1]).GetName() == "prostate (2)"
    np.testing.assert_array_equal(bridge.labels_from_segmentation(segmentation, first_ids, node), first)
    np.testing.assert_array_equal(bridge.labels_from_segmentation(segmentation, second_ids, node), shifted)

    _, replaced_ids = bridge.add_label_segments(shifted, node, segmentation, replace=True)
    assert replaced_ids == first_ids and segments.GetNumberOfSegments() == 2
    np.testing.assert_array_equal(bridge.labels_from_segmentation(segmentation, first_ids, node), shifted)


# Saving and reloading a scene


class ApplicationScene:
    """A scene with the application and Markups logics attached, as Slicer sets it up.

    The Markups logic registers the markups JSON storage node; without it an ROI is saved
    without its control point and comes back empty.
    """

    def __init__(self):
        self.scene = slicer.vtkMRMLScene()
        self.application = slicer.vtkMRMLApplicationLogic()
        self.application.SetMRMLScene(self.scene)
        self.markups = slicer.vtkSlicerMarkupsLogic()
        self.markups.SetMRMLApplicationLogic(self.application)
        self.markups.SetMRMLScene(self.scene)


def test_scene_saved_as_mrb_keeps_boxes_and_segments(reference, tmp_path):
    saved = ApplicationScene()
    node = read_with_slicer(saved.scene, FIXTURES / "Case00.nii.gz", "Case00")
    boxes = boxes_from_labels(reference)
    bridge.roi_nodes_from_boxes(node, boxes)
    _, segment_ids = bridge.add_label_segments(reference, node)
    bundle = tmp_path / "bundle" / "prostate"
    bundle.mkdir(parents=True)
    assert saved.application.SaveSceneToSlicerDataBundleDirectory(str(bundle))
    assert sorted(path.name for path in (bundle / "Data").glob("box slice *.mrk.json")) == [
        f"box slice {index}.mrk.json" for index in sorted(boxes)
    ]
    Path(shutil.make_archive(str(tmp_path / "prostate"), "zip", bundle.parent)).rename(tmp_path / "prostate.mrb")

    reloaded = ApplicationScene()
    (tmp_path / "opened").mkdir()
    assert reloaded.application.OpenSlicerDataBundle(str(tmp_path / "prostate.mrb"), str(tmp_path / "opened"))

    volume = reloaded.scene.GetFirstNode("Case00", "vtkMRMLScalarVolumeNode")
    assert volume is not None
    assert_same_boxes(bridge.boxes_from_roi_nodes(volume, bridge.box_roi_nodes(volume)), boxes)
    segmentation = reloaded.scene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
    np.testing.assert_array_equal(bridge.labels_from_segmentation(segmentation, segment_ids, volume), reference)


def test_boxes_stay_with_their_volume_when_a_scene_import_renames_it(reference, tmp_path):
    saved = ApplicationScene()
    node = read_with_slicer(saved.scene, FIXTURES / "Case00.nii.gz", "Case00")
    boxes = boxes_from_labels(reference)
    bridge.roi_nodes_from_boxes(node, boxes)
    bundle = tmp_path / "scene"
    bundle.mkdir()
    assert saved.application.SaveSceneToSlicerDataBundleDirectory(str(bundle))

    target = ApplicationScene()
    read_with_slicer(target.scene, FIXTURES / "Case29.nii.gz", "Case29")  # takes the IDs the saved nodes had
    target.scene.SetURL(str(bundle / "scene.mrml"))
    assert target.scene.Import()

    imported = target.scene.GetFirstNode("Case00", "vtkMRMLScalarVolumeNode")
    assert imported.GetID() != node.GetID()
    assert_same_boxes(bridge.boxes_from_roi_nodes(imported, bridge.box_roi_nodes(imported)), boxes)


# SAM through the bridge (the one test that runs a network)


def test_box_edit_resegments_only_its_slice(sam_engine, scene):
    from SAMProstateSDGLib.pipeline.segmenter import BoxSegmentation, ProstateSegmenter

    image = sitk.ReadImage(str(FIXTURES / "P158-020.nii.gz"))
    reference = read_mask(FIXTURES / "P158-020_seg.nii.gz")
    node = bridge.volume_node_from_image(image, scene, "P158-020")
    rois = bridge.roi_nodes_from_boxes(node, boxes_from_labels(reference))
    session = BoxSegmentation(ProstateSegmenter(sam_engine, coarse=None).prepare(bridge.image_from_volume_node(node)))
    decoded: list[int] = []
    segment_slice = session.volume.encoded.segment_logits
    session.volume.encoded.segment_logits = lambda index, prompt, decoder=None: decoded.append(index) or segment_slice(index, prompt, decoder)

    assert session.update(bridge.boxes_from_roi_nodes(node, rois)) == [0, 1, 2, 3]
    assert dice(session.labels, reference) > 0.8
    before = session.labels.copy()

    moved = rois[2]
    moved.SetCenter((np.array(moved.GetCenter()) + 6 * bridge.ijk_to_ras(node)[:3, 0]).tolist())
    decoded.clear()
    assert session.update(bridge.boxes_from_roi_nodes(node, bridge.box_roi_nodes(node))) == [1, 2, 3]  # its neighbours read its logits
    assert decoded == [2]
    np.testing.assert_array_equal(session.labels[0], before[0])

    segmentation, segment_ids = bridge.add_label_segments(session.labels, node)
    np.testing.assert_array_equal(bridge.labels_from_segmentation(segmentation, segment_ids, node), session.labels)
