"""The bridge between MRML nodes and the SAMProstateSDG backend (slicer and VTK, no Qt).

Coordinates: the backend works on ``sitk.GetArrayFromImage(image)`` ([K, J, I] = [slice, row,
column]) with boxes and points in slice pixels (x = column = I, y = row = J); MRML nodes live in
RAS millimetres. Every conversion goes through the volume's full IJK-to-RAS matrix, so oblique
and flipped volumes are exact. Volumes under a parent transform are refused (harden it first).

Box ROIs: one ``vtkMRMLMarkupsROINode`` per slice, oriented with the volume's axes, one slice
thick, holding a node reference to its volume (role ``BOX_VOLUME_REFERENCE``; MRML renames
references when a scene import changes node IDs) and the slice index (``BOX_SLICE_ATTRIBUTE``).
Only ROIs made here are boxes: a Crop Volume ROI or any other ROI in the scene is left alone. Reading
an ROI back takes its slice from its geometry, so a box the user dragged to another slice follows it.

Point prompts: a point list's control points are SAM clicks on the slice they lie on. A selected
control point (the default when placed) is a positive click; a control point the user unselects
(the "Sel" check box in the Markups module's table, drawn in the list's unselected colour) is a
negative click. The module's *Click inside* and *Click outside* buttons set both for the user
(``mark_click``: the selected state, and the label "+" or "-").
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from SAMProstateSDGLib.core.errors import InputError
from SAMProstateSDGLib.masks.boxes import Box
from SAMProstateSDGLib.masks.confidence import SliceConfidence
from SAMProstateSDGLib.methods.registry import PROSTATE_SEGMENTS, Segment
from SAMProstateSDGLib.modeling.sam_engine import Prompt

BOX_VOLUME_REFERENCE = "SAMProstateSDGBoxVolume"
BOX_SLICE_ATTRIBUTE = "SAMProstateSDG.Slice"
BOX_FLAGGED_ATTRIBUTE = "SAMProstateSDG.Flagged"  # "1": check this slice, "0": confident; absent until segmented
RESULT_ATTRIBUTE = "SAMProstateSDG.Result"  # on a segmentation node: JSON of the WrittenResult last written into it
CHECK_COLOUR = (1.0, 0.55, 0.0)  # a flagged slice's box: orange
CONFIDENT_COLOUR = (0.3, 0.85, 0.3)  # a confident slice's box: green
INSIDE_COLOUR = (0.2, 0.6, 1.0)  # a positive click (selected control point): blue
OUTSIDE_COLOUR = (1.0, 0.2, 0.2)  # a negative click (unselected control point): red
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])  # its own inverse


# Geometry


def ijk_to_ras(volume_node: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    """The volume's 4x4 IJK-to-RAS matrix; refuses a volume under a parent transform."""
    if volume_node.GetParentTransformNode() is not None:
        raise InputError(f"{volume_node.GetName()} is under a transform; harden the transform first")
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def ras_to_ijk_points(volume_node: slicer.vtkMRMLVolumeNode, points_ras: np.ndarray) -> np.ndarray:
    """Continuous (i, j, k) indices of RAS points given as rows."""
    homogeneous = np.column_stack([points_ras, np.ones(len(points_ras))])
    return (np.linalg.inv(ijk_to_ras(volume_node)) @ homogeneous.T).T[:, :3]


def image_from_volume_node(volume_node: slicer.vtkMRMLScalarVolumeNode) -> sitk.Image:
    """A SimpleITK copy of the volume with its exact geometry (RAS axes turned into LPS)."""
    matrix = ijk_to_ras(volume_node)
    axes_ras = matrix[:3, :3]
    spacing = np.linalg.norm(axes_ras, axis=0)
    image = sitk.GetImageFromArray(np.array(slicer.util.arrayFromVolume(volume_node)))
    image.SetSpacing(spacing.tolist())
    image.SetOrigin((RAS_TO_LPS @ matrix[:3, 3]).tolist())
    image.SetDirection((RAS_TO_LPS @ (axes_ras / spacing)).ravel().tolist())
    return image


def volume_node_from_image(image: sitk.Image, scene: slicer.vtkMRMLScene, name: str) -> slicer.vtkMRMLScalarVolumeNode:
    """A new scalar volume node in ``scene`` holding ``image`` with its exact geometry."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = RAS_TO_LPS @ direction * np.array(image.GetSpacing())
    matrix[:3, 3] = RAS_TO_LPS @ np.array(image.GetOrigin())
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(image))
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix))
    node.CreateDefaultDisplayNodes()
    return node


def _slice_shape(volume_node: slicer.vtkMRMLVolumeNode) -> tuple[int, int, int]:
    """(slices, rows, columns) of the volume's voxel array."""
    columns, rows, slices = volume_node.GetImageData().GetDimensions()
    return slices, rows, columns


# Boxes <-> ROI nodes


def roi_nodes_from_boxes(volume_node: slicer.vtkMRMLScalarVolumeNode, boxes: dict[int, Box]) -> list:
    """One new ROI node per box, named "box slice K", oriented with the volume, one slice thick."""
    return [_add_box_roi_node(volume_node, index, box) for index, box in sorted(boxes.items())]


def _add_box_roi_node(volume_node: slicer.vtkMRMLScalarVolumeNode, index: int, box: Box):
    roi = volume_node.GetScene().AddNewNodeByClass("vtkMRMLMarkupsROINode", f"box slice {index}")
    roi.CreateDefaultDisplayNodes()
    set_roi_box(volume_node, roi, index, box)
    return roi


def set_roi_box(volume_node: slicer.vtkMRMLScalarVolumeNode, roi, index: int, box: Box) -> None:
    """Place an ROI over ``box`` on slice ``index``: oriented with the volume, one slice thick, tagged with both."""
    matrix = ijk_to_ras(volume_node)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    axes = matrix[:3, :3] / spacing
    if np.linalg.det(axes) < 0:  # a flipped volume: turn the slice normal so the ROI frame is a rotation
        axes[:, 2] *= -1
    center = matrix @ np.array([(box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2, index, 1.0])
    orientation = np.eye(4)
    orientation[:3, :3] = axes
    roi.SetAndObserveObjectToNodeMatrix(slicer.util.vtkMatrixFromArray(orientation))
    roi.SetCenter(center[:3].tolist())
    roi.SetSize(((box.x1 - box.x0) * spacing[0], (box.y1 - box.y0) * spacing[1], spacing[2]))
    roi.SetNodeReferenceID(BOX_VOLUME_REFERENCE, volume_node.GetID())
    roi.SetAttribute(BOX_SLICE_ATTRIBUTE, str(index))


def show_box_confidence(roi_node, confidence: SliceConfidence) -> None:
    """Colour a box by its slice's confidence (orange: check this slice) and give the figures in its description."""
    roi_node.SetAttribute(BOX_FLAGGED_ATTRIBUTE, str(int(confidence.flagged)))
    verdict = "check this slice" if confidence.flagged else "confident"
    roi_node.SetDescription(f"{verdict}: {confidence.describe()}")
    display = roi_node.GetDisplayNode()
    if display is not None:
        display.SetSelectedColor(CHECK_COLOUR if confidence.flagged else CONFIDENT_COLOUR)


def roi_centre_ras(roi_node) -> np.ndarray:
    return roi_corners_ras(roi_node).mean(axis=0)


def roi_corners_ras(roi_node) -> np.ndarray:
    """The ROI's eight corners in world (RAS) coordinates, as rows."""
    half = np.array(roi_node.GetSize()) / 2
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=float)
    corners = np.column_stack([signs * half, np.ones(8)])
    object_to_world = slicer.util.arrayFromVTKMatrix(roi_node.GetObjectToWorldMatrix())
    return (object_to_world @ corners.T).T[:, :3]


def box_from_roi_node(volume_node: slicer.vtkMRMLScalarVolumeNode, roi_node) -> tuple[int, Box]:
    """The slice an ROI lies on and its pixel box: the ROI's IJK bounds, kept inside the slice."""
    indices = ras_to_ijk_points(volume_node, roi_corners_ras(roi_node))
    slice_index = int(round(indices[:, 2].mean()))
    slices, rows, columns = _slice_shape(volume_node)
    low, high = indices.min(axis=0), indices.max(axis=0)
    box = Box(
        float(max(low[0], 0)), float(max(low[1], 0)), float(min(high[0], columns - 1)), float(min(high[1], rows - 1))
    )
    if not 0 <= slice_index < slices or not (box.x0 < box.x1 and box.y0 < box.y1):
        raise InputError(f"{roi_node.GetName()} does not cover any pixels of {volume_node.GetName()}")
    return slice_index, box


def box_slice(volume_node: slicer.vtkMRMLScalarVolumeNode, roi_node) -> int | None:
    """The slice a box lies on (``box_from_roi_node``); None for one the user moved off the volume."""
    try:
        return box_from_roi_node(volume_node, roi_node)[0]
    except InputError:
        return None


def boxes_from_roi_nodes(volume_node: slicer.vtkMRMLScalarVolumeNode, roi_nodes) -> dict[int, Box]:
    """The boxes of the given ROIs by slice; two ROIs on one slice are a mistake to fix."""
    boxes: dict[int, Box] = {}
    names: dict[int, str] = {}
    for roi_node in roi_nodes:
        index, box = box_from_roi_node(volume_node, roi_node)
        if index in boxes:
            raise InputError(f"{names[index]} and {roi_node.GetName()} are both on slice {index}; keep one box per slice")
        boxes[index], names[index] = box, roi_node.GetName()
    return boxes


def box_roi_nodes(volume_node: slicer.vtkMRMLScalarVolumeNode) -> list:
    """The volume's box ROIs in the scene: the ROIs made here that reference it (deleted ones are gone)."""
    return [
        roi_node
        for roi_node in _nodes_by_class(volume_node.GetScene(), "vtkMRMLMarkupsROINode")
        if roi_node.GetNodeReferenceID(BOX_VOLUME_REFERENCE) == volume_node.GetID()
    ]


def add_box_roi_node(volume_node: slicer.vtkMRMLScalarVolumeNode, point_ras) -> object:
    """A new box on the slice through ``point_ras``, a third of the slice wide and high, centred on the point."""
    slices, rows, columns = _slice_shape(volume_node)
    i, j, k = ras_to_ijk_points(volume_node, np.asarray(point_ras, dtype=float)[None])[0]
    index = int(round(k))
    if not 0 <= index < slices:
        raise InputError(f"the point lies outside {volume_node.GetName()}; show one of its slices first")
    half_width, half_height = columns / 6, rows / 6
    x = float(np.clip(i, half_width, columns - 1 - half_width))
    y = float(np.clip(j, half_height, rows - 1 - half_height))
    return _add_box_roi_node(volume_node, index, Box(x - half_width, y - half_height, x + half_width, y + half_height))


def _nodes_by_class(scene: slicer.vtkMRMLScene, class_name: str) -> list:
    """The scene's nodes of a class (``slicer.util.getNodesByClass`` ignores its scene argument).

    ``GetNodesByClass`` returns a new collection the caller owns; it is released here, as
    ``slicer.util.getNodesByClass`` does, or it would hold a reference to every node for ever.
    """
    collection = scene.GetNodesByClass(class_name)
    collection.UnRegister(None)
    return [collection.GetItemAsObject(number) for number in range(collection.GetNumberOfItems())]


# Point prompts


def new_clicks_node(scene: slicer.vtkMRMLScene):
    """A new point list for clicks, drawn blue where a click is inside the gland and red where it is outside."""
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", scene.GenerateUniqueName("clicks"))
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetSelectedColor(INSIDE_COLOUR)
    display.SetColor(OUTSIDE_COLOUR)
    return node


def mark_click(point_list_node, number: int, inside: bool) -> None:
    """Make control point ``number`` a positive (inside) or negative (outside) click, and label it "+" or "-"."""
    point_list_node.SetNthControlPointSelected(number, inside)
    point_list_node.SetNthControlPointLabel(number, "+" if inside else "-")


def click_pixel(volume_node: slicer.vtkMRMLScalarVolumeNode, point_list_node, number: int) -> tuple[int, float, float] | None:
    """(slice, column, row) of control point ``number`` on the volume's voxel grid; None where it lies outside the volume,
    or is not placed yet (the preview point that follows the mouse in place mode)."""
    if point_list_node.GetNthControlPointPositionStatus(number) != slicer.vtkMRMLMarkupsNode.PositionDefined:
        return None
    slices, rows, columns = _slice_shape(volume_node)
    position = np.zeros(3)
    point_list_node.GetNthControlPointPositionWorld(number, position)
    i, j, k = ras_to_ijk_points(volume_node, position[None])[0]
    index = int(round(k))
    if 0 <= index < slices and -0.5 <= i <= columns - 0.5 and -0.5 <= j <= rows - 0.5:
        return index, float(i), float(j)
    return None


def point_prompts(volume_node: slicer.vtkMRMLScalarVolumeNode, point_list_node) -> dict[int, Prompt]:
    """The list's clicks as point prompts per slice (selected = positive, unselected = negative); points outside the volume are left out."""
    clicks: dict[int, list[tuple[tuple[float, float], int]]] = {}
    for number in range(point_list_node.GetNumberOfControlPoints()):
        pixel = click_pixel(volume_node, point_list_node, number)
        if pixel is not None:
            index, i, j = pixel
            clicks.setdefault(index, []).append(((i, j), 1 if point_list_node.GetNthControlPointSelected(number) else 0))
    return {
        index: Prompt(points=tuple(point for point, _ in items), point_labels=tuple(label for _, label in items))
        for index, items in clicks.items()
    }


# Labels <-> segmentation node


def oriented_mask(mask: np.ndarray, volume_node: slicer.vtkMRMLScalarVolumeNode):
    """A binary ``vtkOrientedImageData`` ([K, J, I] mask) on the volume's voxel grid."""
    image = slicer.vtkOrientedImageData()
    image.SetExtent(volume_node.GetImageData().GetExtent())
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(mask, dtype=np.uint8).ravel(), deep=True)
    image.GetPointData().SetScalars(scalars)
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras(volume_node)))
    return image


def new_segmentation_node(volume_node: slicer.vtkMRMLScalarVolumeNode, name: str | None = None):
    """An empty segmentation node on the volume's geometry, shown in the views."""
    node = volume_node.GetScene().AddNewNodeByClass("vtkMRMLSegmentationNode", name or f"{volume_node.GetName()} prostate")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    return node


def unique_segment_name(segmentation_node, name: str) -> str:
    """``name``, or "name (2)", "name (3)", ... whichever the segmentation does not have yet."""
    segmentation = segmentation_node.GetSegmentation()
    candidate, number = name, 1
    while segmentation.GetSegmentIdBySegmentName(candidate):
        number += 1
        candidate = f"{name} ({number})"
    return candidate


def set_segment_mask(segmentation_node, segment_id: str, mask: np.ndarray, volume_node) -> None:
    """Replace a segment's voxels with a [K, J, I] mask on the volume's grid."""
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    if not logic.SetBinaryLabelmapToSegment(oriented_mask(mask, volume_node), segmentation_node, segment_id, logic.MODE_REPLACE):
        raise RuntimeError(f"could not write segment {segment_id} of {segmentation_node.GetName()}")


def add_label_segments(
    labels: np.ndarray,
    volume_node: slicer.vtkMRMLScalarVolumeNode,
    segmentation_node=None,
    segments: tuple[Segment, ...] = PROSTATE_SEGMENTS,
    replace: bool = False,
) -> tuple[object, dict[int, str]]:
    """Write a label array ([K, J, I]) as one segment per label (name and colour from ``segments``, a
    method's, ``methods.registry``); returns the node and segment IDs by label.

    Without ``segmentation_node`` a new node is made, shown in 3D too (its closed surface follows every later
    change). An existing segment of the same name is kept and a new one named "name (2)" is added, unless
    ``replace`` is true.
    """
    node = segmentation_node or new_segmentation_node(volume_node)
    segment_ids = {}
    for segment in segments:
        mask = labels == segment.label
        existing = node.GetSegmentation().GetSegmentIdBySegmentName(segment.name)
        if existing and replace:
            set_segment_mask(node, existing, mask, volume_node)
            segment_ids[segment.label] = existing
        else:
            image = oriented_mask(mask, volume_node)
            segment_ids[segment.label] = node.AddSegmentFromBinaryLabelmapRepresentation(image, unique_segment_name(node, segment.name), segment.colour)
    if segmentation_node is None:  # after the segments: a segmentation without any keeps no representation
        node.CreateClosedSurfaceRepresentation()
    return node, segment_ids


def labels_from_segmentation(segmentation_node, segment_ids: dict[int, str], volume_node) -> np.ndarray:
    """The segments as a uint8 label array ([K, J, I]) resampled onto the volume's voxel grid."""
    reference = slicer.vtkOrientedImageData()
    reference.SetExtent(volume_node.GetImageData().GetExtent())
    reference.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras(volume_node)))
    labels = np.zeros(_slice_shape(volume_node), dtype=np.uint8)
    for label, segment_id in segment_ids.items():
        segment_image, resampled = slicer.vtkOrientedImageData(), slicer.vtkOrientedImageData()
        slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(segmentation_node, segment_id, segment_image)
        if segment_image.IsEmpty():
            continue
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(segment_image, reference, resampled)
        values = numpy_support.vtk_to_numpy(resampled.GetPointData().GetScalars()).reshape(labels.shape)
        labels[values > 0] = label
    return labels


def segment_masks(segmentation_node, volume_node) -> dict[str, np.ndarray]:
    """Segment name -> boolean mask ([K, J, I]) on the volume's voxel grid, as the segmentation is now (edits included)."""
    segmentation = segmentation_node.GetSegmentation()
    masks = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        name = segmentation.GetSegment(segment_id).GetName()
        if name in masks:
            raise InputError(f"{segmentation_node.GetName()} has two segments named {name!r}; rename one")
        masks[name] = labels_from_segmentation(segmentation_node, {1: segment_id}, volume_node) > 0
    return masks


@dataclasses.dataclass(frozen=True)
class WrittenResult:
    """What the module last wrote into a segmentation node: its segment IDs by label, and the method and model
    that made them (stored on the node, so it is saved with the scene)."""

    segment_ids: dict[int, str]
    method: str
    model: str


def record_written_result(segmentation_node, result: WrittenResult) -> None:
    segment_ids = {str(label): segment_id for label, segment_id in result.segment_ids.items()}
    segmentation_node.SetAttribute(RESULT_ATTRIBUTE, json.dumps({"segments": segment_ids, "method": result.method, "model": result.model}))


def written_result(segmentation_node) -> WrittenResult | None:
    """The result the module last wrote into the node, while all its segments are still there (None otherwise)."""
    try:
        stored = json.loads(segmentation_node.GetAttribute(RESULT_ATTRIBUTE) or "null")
        result = WrittenResult({int(label): str(i) for label, i in stored["segments"].items()}, str(stored["method"]), str(stored["model"]))
    except (TypeError, ValueError, KeyError, AttributeError):
        return None
    segmentation = segmentation_node.GetSegmentation()
    return result if all(segmentation.GetSegment(segment_id) for segment_id in result.segment_ids.values()) else None


def with_box(prompt: Prompt, box: Box | None) -> Prompt:
    """The point prompt with ``box`` added (unchanged without one)."""
    return prompt if box is None else dataclasses.replace(prompt, box=box.as_tuple())
