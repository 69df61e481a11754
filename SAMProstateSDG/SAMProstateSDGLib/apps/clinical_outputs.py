"""What ``segment`` gives a clinician besides the label volume: measurements, JSON, a report page, DICOM SEG.

Nothing is written unless asked for: the measurements are always printed; ``--report``,
``--report-page`` and ``--dicom-seg`` name their files (checked before any model is loaded), which ``segment``
writes together with the label volume: all or none.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..core.checksums import sha256_of
from ..core.errors import InputError
from ..core.files import json_text, text_writer
from ..io.dicom_series import DicomVolume, read_dicom_volume
from ..io.measurements import GlandMeasurements, measure_image
from ..io.provenance import Provenance
from ..io.volume_io import AXIAL_COSINE
from ..methods.registry import method

REPORT_FORMAT = "samprostate-measurements"


def check_clinical_options(arguments) -> None:
    """Refuse bad clinical options before anything is loaded or written (paths as such: ``files.check_outputs``)."""
    from ..io.report import REPORT_SUFFIXES

    source = arguments.input[0]
    if arguments.psa is not None and not (math.isfinite(arguments.psa) and arguments.psa > 0):
        raise InputError(f"--psa must be a positive number of ng/mL, not {arguments.psa}")
    if (arguments.dicom_seg or arguments.series_uid) and not source.is_dir():
        raise InputError("--dicom-seg and --series-uid need a DICOM folder as input (the SEG references its images)")
    if arguments.report_page and arguments.report_page.suffix.lower() not in REPORT_SUFFIXES:
        raise InputError(f"--report-page writes {' or '.join(REPORT_SUFFIXES)}, not {arguments.report_page.name}")
    outputs = [arguments.output, arguments.boxes_out, arguments.overlay, arguments.report, arguments.report_page, arguments.dicom_seg]
    for path in filter(None, outputs):  # beyond files.check_outputs: nothing is written into a DICOM study
        if source.is_dir() and path.resolve().is_relative_to(source.resolve()):
            raise InputError(f"{path} is inside the input folder {source}; write outputs elsewhere")
        if path.resolve() == source.resolve():
            raise InputError(f"{path} is the input; an output never replaces an input")


def read_dicom_input(folder: Path, series_uid: str | None) -> DicomVolume:
    """The chosen series, saying which one it is when the folder holds several."""
    dicom = read_dicom_volume(folder, series_uid)
    axial = dicom.series.axial_cosine >= AXIAL_COSINE
    how = "as asked (--series-uid)" if series_uid else "the only series" if not dicom.alternatives else f"as the {'axial ' if axial else ''}T2 series"
    others = f"; {dicom.alternatives} other series in the folder (--series-uid chooses)" if dicom.alternatives else ""
    print(f"{folder}: using {dicom.series.summary()}, {how}{others}")
    return dicom


def clinical_writers(
    arguments, source: Path, output: Path, volume, labels: np.ndarray, dicom: DicomVolume | None,
) -> tuple[GlandMeasurements, dict[Path, Callable[[str], object]]]:
    """The measurements, and the writers of the JSON, report page and SEG that were asked for (rendered and built now,
    so that a failure comes before anything is written; ``segment`` writes them together with the label volume)."""
    chosen = method(arguments.method)
    zonal = chosen.zonal
    measurements = measure_image(labels, volume.image, zonal, arguments.psa)
    writers: dict[Path, Callable[[str], object]] = {}
    if not (arguments.report or arguments.report_page or arguments.dicom_seg):
        return measurements, writers
    provenance = chosen.provenance(arguments.sam_checkpoint, arguments.coarse_checkpoint, arguments.method_model_entry)
    warnings = input_warnings(volume)
    if arguments.report:
        report = report_json(source, output, measurements, provenance, dicom, warnings)
        if arguments.boxes_in:  # the user's boxes or clicks: which file, as it was read
            report["boxes"] = {"file": str(arguments.boxes_in), "sha256": sha256_of(arguments.boxes_in)}
        writers[arguments.report] = text_writer(json_text(report))
    if arguments.report_page:
        from ..io.report import report_writer

        writers[arguments.report_page] = report_writer(
            arguments.report_page, report_subject(source, dicom, warnings), volume.image, volume.normalised, labels, measurements, provenance, zonal,
        )
    if arguments.dicom_seg:
        from ..io.dicom_seg import AUTOMATIC, SEMIAUTOMATIC, dicom_seg_writer

        assert dicom is not None  # --dicom-seg is refused unless the input is a DICOM folder
        algorithm_type = SEMIAUTOMATIC if arguments.boxes_in else AUTOMATIC  # boxes or clicks a user checked or edited
        writers[arguments.dicom_seg] = dicom_seg_writer(labels, dicom.series, zonal, provenance, algorithm_type)
    return measurements, writers


def report_json(
    source: Path, output: Path, measurements: GlandMeasurements, provenance: Provenance, dicom: DicomVolume | None, warnings: tuple[str, ...] = (),
) -> dict:
    data = {"format": REPORT_FORMAT, "version": 1, "input": str(source), "labels": str(output)}
    if dicom is not None:
        data["series"] = {"uid": dicom.series.uid, "description": dicom.series.description, "slices": len(dicom.series.files)}
    if warnings:  # ``input_warnings``
        data["warnings"] = list(warnings)
    return data | {"measurements": measurements.to_json(), "provenance": provenance.to_json()}


def input_warnings(volume) -> tuple[str, ...]:
    """What a reader of the outputs must beware of in the input (``segment`` prints it too)."""
    from ..pipeline.localisation import SUPERIOR_INFERIOR_SWAPPED_NOTE

    return (SUPERIOR_INFERIOR_SWAPPED_NOTE,) if volume.header_swaps_superior_inferior else ()


def report_subject(source: Path, dicom: DicomVolume | None, warnings: tuple[str, ...] = ()):
    from ..io.report import ReportSubject

    if dicom is None:
        return ReportSubject(source.name, warnings=warnings)
    header = dicom.series.first
    patient = " ".join(filter(None, [str(header.get("PatientName", "") or ""), f"(ID {header.PatientID})" if header.get("PatientID") else ""]))
    study = " ".join(filter(None, [str(header.get("StudyDescription", "") or ""), _dicom_date(header.get("StudyDate", ""))]))
    return ReportSubject(
        source.name,
        f"Patient: {patient}" if patient else "",
        f"Study: {study}" if study else "",
        f"Series: {dicom.series.summary(with_uid=False)}",
        f"Series UID: {dicom.series.uid}",
        warnings,
    )


def _dicom_date(value) -> str:
    text = str(value or "")
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 and text.isdigit() else text
