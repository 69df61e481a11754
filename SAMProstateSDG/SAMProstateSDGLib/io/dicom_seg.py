"""DICOM Segmentation (SEG) output that references the source MR series, for PACS and planning systems.

Segments are coded with SNOMED CT (from pydicom's DICOM code dictionary, not typed in by hand):
prostate 41216001; zonal methods: transition zone 399384005, peripheral zone 279706003; category
Anatomical Structure 91723000. The algorithm is identified by name, version, family (DCM 123110
Artificial Intelligence) and parameters (method, model ids and SHA-256 prefixes).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import highdicom
import numpy as np
from pydicom.sr.codedict import codes

from ..core.errors import InputError
from ..core.files import write_atomically
from .dicom_series import DicomSeries
from .provenance import Provenance

PROSTATE_SEGMENT = ("Prostate", codes.SCT.Prostate, (50, 30, 60))  # label, SNOMED CT code, CIELab display colour
ZONE_SEGMENTS = (
    ("Transition zone", codes.SCT.TransitionZoneOfTheProstate, (60, 20, 60)),
    ("Peripheral zone", codes.SCT.PeripheralZoneOfTheProstate, (70, -40, 50)),
)
SERIES_NUMBER = 9901  # distinct from the scanner's usual numbering; viewers sort it after the source series


AUTOMATIC = highdicom.seg.SegmentAlgorithmTypeValues.AUTOMATIC
SEMIAUTOMATIC = highdicom.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC  # reviewed, possibly edited, by the user (Slicer)


def segment_descriptions(
    zonal: bool, provenance: Provenance, algorithm_type: highdicom.seg.SegmentAlgorithmTypeValues = AUTOMATIC
) -> list[highdicom.seg.SegmentDescription]:
    """Segment 1 = prostate, or 1 = transition zone and 2 = peripheral zone (the label values)."""
    algorithm = highdicom.AlgorithmIdentificationSequence(
        name=f"{provenance.software} {provenance.method}", family=codes.DCM.ArtificialIntelligence, version=provenance.version, source=provenance.software,
        parameters=provenance.parameters(),
    )
    descriptions = []
    for number, (label, code, colour) in enumerate(ZONE_SEGMENTS if zonal else (PROSTATE_SEGMENT,), start=1):
        descriptions.append(
            highdicom.seg.SegmentDescription(
                segment_number=number,
                segment_label=label,
                segmented_property_category=codes.SCT.AnatomicalStructure,
                segmented_property_type=code,
                algorithm_type=algorithm_type,
                algorithm_identification=algorithm,
                display_color=highdicom.color.CIELabColor(*colour),
            )
        )
    return descriptions


def write_dicom_seg(
    path: str | Path, labels: np.ndarray, series: DicomSeries, zonal: bool, provenance: Provenance,
    algorithm_type: highdicom.seg.SegmentAlgorithmTypeValues = AUTOMATIC,
) -> None:
    """Write a binary SEG of ``labels`` ([slices, rows, columns], slice k on ``series.headers[k]``)."""
    write_atomically(path, dicom_seg_writer(labels, series, zonal, provenance, algorithm_type))


def dicom_seg_writer(
    labels: np.ndarray, series: DicomSeries, zonal: bool, provenance: Provenance,
    algorithm_type: highdicom.seg.SegmentAlgorithmTypeValues = AUTOMATIC,
) -> Callable[[str], object]:
    """The SEG built now (refused with a message when highdicom cannot build it from the series), and what saves it."""
    segments = segment_descriptions(zonal, provenance, algorithm_type)
    values = np.where(labels <= len(segments), labels, 0).astype(np.uint8)
    try:
        segmentation = _segmentation(values, series, segments, provenance, algorithm_type)
    except ValueError as error:  # the series' headers lack or contradict what a SEG must reference
        raise InputError(f"cannot make a DICOM SEG of {series.summary(with_uid=False)}: {error}") from None
    return lambda temporary: segmentation.save_as(temporary)


def _segmentation(values: np.ndarray, series: DicomSeries, segments, provenance: Provenance, algorithm_type) -> highdicom.seg.Segmentation:
    return highdicom.seg.Segmentation(
        source_images=list(series.headers),
        pixel_array=values,
        segmentation_type=highdicom.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=highdicom.UID(),
        series_number=SERIES_NUMBER,
        sop_instance_uid=highdicom.UID(),
        instance_number=1,
        manufacturer=provenance.software,
        manufacturer_model_name=f"{provenance.software} {provenance.method}",
        software_versions=provenance.version,
        device_serial_number="none",
        series_description=f"{provenance.software} {provenance.method} segmentation"[:64],
        content_label="PROSTATE",
        content_description=f"{algorithm_type.value.capitalize()} prostate segmentation ({provenance.method})"[:64],
        omit_empty_frames=bool(values.any()),  # an empty result keeps its frames: a SEG needs at least one
    )
