"""DICOM SEG, report page and report JSON from the Slicer module: the segmentation node as the user left it.

A DICOM SEG must reference the images it was drawn on. Slicer's DICOM module records the SOP
Instance UIDs of a loaded series in the volume node's ``DICOM.instanceUIDs`` attribute, and its
database knows their files (``slicer.dicomDatabase.fileForInstance``, passed in here as
``instance_file`` so this module needs no Qt). The volume's voxel grid must still be the series'
grid: each source image is matched to its slice by position and orientation. The SEG, report and
JSON are written by the command line's own code (``io.dicom_seg``, ``io.report``,
``apps.clinical_outputs``); the SEG's segments are marked SEMIAUTOMATIC (reviewed, possibly
edited, by the user).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from SAMProstateSDGLib.apps.clinical_outputs import report_json, report_subject
from SAMProstateSDGLib.core.catalog import CatalogEntry, catalog_entry, default_entry
from SAMProstateSDGLib.core.errors import InputError
from SAMProstateSDGLib.core.files import write_json
from SAMProstateSDGLib.io.dicom_series import DicomSeries, DicomVolume, series_from_files
from SAMProstateSDGLib.io.measurements import GlandMeasurements, labels_from_segments, measure
from SAMProstateSDGLib.io.provenance import ModelFile, Provenance
from SAMProstateSDGLib.methods.registry import method as registered
from SAMProstateSDGLib.slicerapp import mrml as bridge
from SAMProstateSDGLib.slicerapp.workflow import checkSegmentationVolume

DICOM_INSTANCES_ATTRIBUTE = "DICOM.instanceUIDs"  # set by Slicer's DICOM scalar volume plugin
POSITION_TOLERANCE = 0.01  # voxels: a source image lies on a slice of the volume
DIRECTION_TOLERANCE = 1e-3  # cosine difference: the volume's row and column axes are the images'

InstanceFile = Callable[[str], str]  # SOP Instance UID -> file path ("" when unknown), as slicer.dicomDatabase.fileForInstance


def segmentation_labels(volume_node, segmentation_node) -> tuple[np.ndarray, bool]:
    """The segmentation on the volume's grid as labels ([K, J, I]; 1 prostate, or 1 TZ and 2 PZ) and whether it is zonal.

    These are the segments the module last wrote into the node, as they are now (edits included): not an earlier
    result kept beside them ("prostate" edited, then "prostate (2)"), nor the user's other segments (rectum, lesion).
    A node the module did not write is read by its segments' names (``measurements.labels_from_segments``).
    """
    if segmentation_node is None:
        raise InputError("there is no output segmentation yet: segment first, or choose one")
    checkSegmentationVolume(volume_node, segmentation_node)
    written = bridge.written_result(segmentation_node)
    if written is None:
        return labels_from_segments(bridge.segment_masks(segmentation_node, volume_node))
    return bridge.labels_from_segmentation(segmentation_node, written.segment_ids, volume_node), registered(written.method).zonal


def dicom_source(volume_node, instance_file: InstanceFile | None) -> DicomSeries:
    """The DICOM series the volume was loaded from; a clear refusal when it was not, or its files are gone."""
    uids = (volume_node.GetAttribute(DICOM_INSTANCES_ATTRIBUTE) or "").split()
    if not uids or instance_file is None:
        raise InputError(
            f"{volume_node.GetName()} was not loaded from DICOM, so a DICOM SEG cannot reference its images: "
            "import the series in the DICOM module, load it from there and segment that volume (or save the segmentation as a file)"
        )
    files = [instance_file(uid) for uid in uids]
    missing = [uid for uid, file in zip(uids, files) if not file or not Path(file).is_file()]
    if missing:
        raise InputError(
            f"{len(missing)} of the {len(uids)} DICOM images of {volume_node.GetName()} are no longer in the DICOM database "
            f"(e.g. {missing[0]}); import the series again"
        )
    return series_from_files([Path(file) for file in files])


def labels_on_series(volume_node, labels: np.ndarray, series: DicomSeries) -> np.ndarray:
    """``labels`` reordered so that frame n lies on ``series.headers[n]``; refused when the grid is no longer the series'."""
    matrix = bridge.ijk_to_ras(volume_node)
    ras_to_ijk = np.linalg.inv(matrix)
    axes = matrix[:3, :3] / np.linalg.norm(matrix[:3, :3], axis=0)
    slices, rows, columns = labels.shape
    order = []
    for header in series.headers:
        orientation = bridge.RAS_TO_LPS @ np.array(header.ImageOrientationPatient, dtype=float).reshape(2, 3).T  # columns: row, column direction
        position = ras_to_ijk @ np.append(bridge.RAS_TO_LPS @ np.array(header.ImagePositionPatient, dtype=float), 1.0)
        index = int(round(position[2]))
        if (
            (int(header.Rows), int(header.Columns)) != (rows, columns)
            or np.abs(orientation - axes[:, :2]).max() > DIRECTION_TOLERANCE
            or np.abs(position[:3] - (0, 0, index)).max() > POSITION_TOLERANCE
            or not 0 <= index < slices
        ):
            raise InputError(
                f"{volume_node.GetName()} no longer has the voxel grid of its DICOM series (resampled, cropped or reoriented?); "
                "export the segmentation of the volume as loaded from DICOM"
            )
        order.append(index)
    if sorted(order) != list(range(slices)):
        raise InputError(f"{volume_node.GetName()} does not match its DICOM series slice for slice")
    return labels[order]


def export_dicom_seg(volume_node, segmentation_node, path: Path, instance_file: InstanceFile | None, provenance: Provenance) -> None:
    """Write the segmentation as a DICOM SEG referencing the series the volume was loaded from."""
    from SAMProstateSDGLib.io.dicom_seg import SEMIAUTOMATIC, write_dicom_seg

    series = dicom_source(volume_node, instance_file)
    _refuse_inside_inputs(path, series)
    labels, zonal = segmentation_labels(volume_node, segmentation_node)
    write_dicom_seg(path, labels_on_series(volume_node, labels, series), series, zonal, provenance, SEMIAUTOMATIC)


def write_report_files(
    volume_node, segmentation_node, page: Path | None, json_path: Path | None, provenance: Provenance,
    psa: float | None = None, instance_file: InstanceFile | None = None, warnings: tuple[str, ...] = (),
) -> GlandMeasurements:
    """The one-page report (PNG or PDF) and the report JSON, as ``segment --report-page --report`` writes them.

    The patient, study and series come from the DICOM headers when the volume was loaded from DICOM; ``warnings``
    (``clinical_outputs.input_warnings``) go into both.
    """
    from SAMProstateSDGLib.io.report import REPORT_SUFFIXES, write_report
    from SAMProstateSDGLib.io.volume_io import normalised_array

    if page is not None and page.suffix.lower() not in REPORT_SUFFIXES:
        raise InputError(f"the report page is written as {' or '.join(REPORT_SUFFIXES)}, not {page.name}")
    labels, zonal = segmentation_labels(volume_node, segmentation_node)
    measurements = measure(labels, bridge.ijk_to_ras(volume_node), zonal, psa)
    image = bridge.image_from_volume_node(volume_node)
    dicom = None
    if volume_node.GetAttribute(DICOM_INSTANCES_ATTRIBUTE) and instance_file is not None:
        dicom = DicomVolume(dicom_source(volume_node, instance_file), image, alternatives=0)
    source, output = Path(volume_node.GetName()), Path(segmentation_node.GetName())
    for path in filter(None, [page, json_path]):
        if dicom is not None:
            _refuse_inside_inputs(path, dicom.series)
    if json_path is not None:
        write_json(json_path, report_json(source, output, measurements, provenance, dicom, warnings))
    if page is not None:
        write_report(page, report_subject(source, dicom, warnings), image, normalised_array(image), labels, measurements, provenance, zonal)
    return measurements


def provenance_of(method: str, model: str, trained: dict[str, CatalogEntry], checkpoint: Path | None = None) -> Provenance:
    """The software, method and model files behind a segmentation made in the module.

    ``model`` is the Segment tab's choice: a shipped SAM model, a registered trained model (in
    ``trained``), or a user's SAM checkpoint (``checkpoint``).
    """
    chosen = registered(method)
    if checkpoint is not None:
        return chosen.provenance(sam_checkpoint=checkpoint)
    shipped = chosen.provenance()
    if model in trained:
        entry = trained[model]
        role = "coarse" if entry.kind == "coarse" else "method"
        models = tuple(item for item in shipped.models if item.role != role) + (ModelFile(role, entry.id, entry.sha256),)
        return Provenance(method, chosen.title, models)
    sam = catalog_entry(model, "sam")
    if sam == default_entry("sam"):
        return shipped
    return Provenance(method, chosen.title, tuple(ModelFile("sam", sam.id, sam.sha256) if item.role == "sam" else item for item in shipped.models))


def _refuse_inside_inputs(path: Path, series: DicomSeries) -> None:
    """Never write beside the source images (a PACS export or the DICOM database's folder)."""
    for folder in {file.parent.resolve() for file in series.files}:
        if Path(path).resolve().is_relative_to(folder):
            raise InputError(f"{path} is in the folder of the source DICOM images ({folder}); write outputs elsewhere")
