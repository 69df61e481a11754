"""Render the README / Extensions Index screenshots from the product's own output, offscreen with VTK.

    .venv/bin/python scripts/render_screenshots.py [--case PATH] [--method zero-shot|sammed|desam-box|desam-grid|samed]

Left: the mid-gland axial slice with the proposed box (yellow) and the segmentation outline; right:
the segmentation surface in 3D with every proposed box. Written to Screenshots/METHOD_CASE.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import vtk
from vtk.util import numpy_support

from SAMProstateSDGLib.io.volume_io import normalised_array, read_volume
from SAMProstateSDGLib.methods.registry import method
from SAMProstateSDGLib.pipeline.segmenter import ProstateSegmenter

ROOT = Path(__file__).resolve().parents[1]
LABEL_COLOURS = {1: (0.95, 0.35, 0.25), 2: (0.25, 0.6, 0.95)}  # prostate or transition zone; peripheral zone
BOX_COLOUR = (1.0, 0.85, 0.1)


def image_data(array: np.ndarray, spacing: tuple[float, float, float]) -> vtk.vtkImageData:
    """A [K, J, I] array as vtkImageData in millimetres (index space scaled by the spacing)."""
    data = vtk.vtkImageData()
    data.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    data.SetSpacing(spacing)
    data.GetPointData().SetScalars(numpy_support.numpy_to_vtk(np.ascontiguousarray(array).ravel(), deep=True))
    return data


def box_lines(boxes: dict, spacing: tuple[float, float, float], slices: list[int] | None = None) -> vtk.vtkActor:
    points, lines = vtk.vtkPoints(), vtk.vtkCellArray()
    for index, box in boxes.items():
        if slices is not None and index not in slices:
            continue
        z = index * spacing[2]
        corners = [(box.x0, box.y0), (box.x1, box.y0), (box.x1, box.y1), (box.x0, box.y1)]
        ids = [points.InsertNextPoint(x * spacing[0], y * spacing[1], z) for x, y in corners]
        polyline = vtk.vtkPolyLine()
        polyline.GetPointIds().SetNumberOfIds(5)
        for position, point_id in enumerate(ids + ids[:1]):
            polyline.GetPointIds().SetId(position, point_id)
        lines.InsertNextCell(polyline)
    polydata = vtk.vtkPolyData()
    polydata.SetPoints(points)
    polydata.SetLines(lines)
    return _actor(polydata, BOX_COLOUR, line_width=2.5)


def _actor(polydata_or_port, colour, line_width: float = 1.0, opacity: float = 1.0) -> vtk.vtkActor:
    mapper = vtk.vtkPolyDataMapper()
    if isinstance(polydata_or_port, vtk.vtkPolyData):
        mapper.SetInputData(polydata_or_port)
    else:
        mapper.SetInputConnection(polydata_or_port)
    mapper.ScalarVisibilityOff()
    actor = vtk.vtkActor()
    actor.SetMapper(mapper)
    actor.GetProperty().SetColor(colour)
    actor.GetProperty().SetLineWidth(line_width)
    actor.GetProperty().SetOpacity(opacity)
    return actor


def slice_view(grey: np.ndarray, labels: np.ndarray, boxes: dict, index: int, spacing) -> vtk.vtkRenderer:
    renderer = vtk.vtkRenderer()
    plane = image_data((grey[index : index + 1] * 255).astype(np.uint8), spacing)
    image_actor = vtk.vtkImageActor()
    image_actor.GetMapper().SetInputData(plane)
    image_actor.SetPosition(0, 0, index * spacing[2])
    renderer.AddActor(image_actor)
    for label, colour in LABEL_COLOURS.items():
        mask = image_data((labels[index : index + 1] == label).astype(np.uint8), spacing)
        contour = vtk.vtkContourFilter()
        contour.SetInputData(mask)
        contour.SetValue(0, 0.5)
        actor = _actor(contour.GetOutputPort(), colour, line_width=3)
        actor.SetPosition(0, 0, index * spacing[2] - 0.5)  # just in front of the image, seen from below
        renderer.AddActor(actor)
    renderer.AddActor(box_lines(boxes, spacing, [index]))
    camera = renderer.GetActiveCamera()
    centre = (grey.shape[2] * spacing[0] / 2, grey.shape[1] * spacing[1] / 2, index * spacing[2])
    camera.SetFocalPoint(centre)
    camera.SetPosition(centre[0], centre[1], centre[2] - 500)
    camera.SetViewUp(0, -1, 0)  # rows go down, as radiologists read axial slices
    renderer.ResetCamera()
    camera.Zoom(1.35)
    return renderer


def volume_view(labels: np.ndarray, boxes: dict, spacing) -> vtk.vtkRenderer:
    renderer = vtk.vtkRenderer()
    for label, colour in LABEL_COLOURS.items():
        if not (labels == label).any():
            continue
        surface = vtk.vtkDiscreteFlyingEdges3D()
        surface.SetInputData(image_data((labels == label).astype(np.uint8), spacing))
        surface.SetValue(0, 1)
        smooth = vtk.vtkWindowedSincPolyDataFilter()
        smooth.SetInputConnection(surface.GetOutputPort())
        smooth.SetNumberOfIterations(20)
        smooth.SetPassBand(0.05)
        smooth.NormalizeCoordinatesOn()
        normals = vtk.vtkPolyDataNormals()
        normals.SetInputConnection(smooth.GetOutputPort())
        renderer.AddActor(_actor(normals.GetOutputPort(), colour, opacity=0.9))
    renderer.AddActor(box_lines(boxes, spacing))
    camera = renderer.GetActiveCamera()
    renderer.ResetCamera()
    camera.SetViewUp(0, -1, 0)
    camera.Elevation(-60)
    camera.Azimuth(30)
    renderer.ResetCamera()
    return renderer


def render(grey: np.ndarray, labels: np.ndarray, boxes: dict, spacing, output: Path) -> None:
    gland_slices = np.flatnonzero(labels.reshape(len(labels), -1).any(1))
    index = int(gland_slices[len(gland_slices) // 2]) if len(gland_slices) else len(labels) // 2
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(1200, 600)
    for renderer, viewport in ((slice_view(grey, labels, boxes, index, spacing), (0, 0, 0.5, 1)), (volume_view(labels, boxes, spacing), (0.5, 0, 1, 1))):
        renderer.SetViewport(*viewport)
        renderer.SetBackground(0.08, 0.08, 0.1)
        window.AddRenderer(renderer)
    window.Render()
    grabber = vtk.vtkWindowToImageFilter()
    grabber.SetInput(window)
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(output))
    writer.SetInputConnection(grabber.GetOutputPort())
    writer.Write()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=Path, default=ROOT.parent / "shared" / "data" / "prostate" / "Prostate158" / "P158-020.nii.gz")
    parser.add_argument("--method", default="zero-shot")
    parser.add_argument("--device", default="cpu")
    arguments = parser.parse_args()
    image = read_volume(arguments.case)
    segmenter = method(arguments.method).load(ProstateSegmenter.load(arguments.device))
    result = segmenter.segment(segmenter.base.prepare(image))
    labels, boxes = result.labels, result.boxes
    name = arguments.case.name.split(".")[0]
    output = ROOT / "Screenshots" / f"{arguments.method}_{name}.png"
    render(normalised_array(image), labels, boxes, image.GetSpacing(), output)
    print(f"wrote {output}: {len(boxes)} boxes, labels {sorted(set(np.unique(labels)) - {0})}")


if __name__ == "__main__":
    main()
