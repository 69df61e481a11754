"""Writing real fixture volumes as DICOM MR series (what a PACS export looks like) for the DICOM tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

STUDY_UID = generate_uid()
FRAME_OF_REFERENCE_UID = generate_uid()


def write_series(image: sitk.Image, folder: Path, description: str, number: int) -> str:
    """One MR file per slice of ``image`` (rescaled to uint16) with its exact geometry; returns the series UID."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    voxels = sitk.GetArrayFromImage(image).astype(np.float64)
    voxels = np.round((voxels - voxels.min()) / max(np.ptp(voxels), 1e-9) * 4000).astype(np.uint16)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = image.GetSpacing()
    for index, plane in enumerate(voxels):
        header = _header(series_uid, description, number, index)
        header.ImagePositionPatient = [f"{value:.6f}" for value in image.TransformIndexToPhysicalPoint((0, 0, index))]
        header.ImageOrientationPatient = [f"{value:.8f}" for value in (*direction[:, 0], *direction[:, 1])]
        header.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]
        header.SliceThickness = f"{spacing[2]:.6f}"
        header.Rows, header.Columns = plane.shape
        header.PixelData = plane.tobytes()
        header.save_as(folder / f"{series_uid[-8:]}_{index:03d}.dcm", enforce_file_format=True)
    return series_uid


def _header(series_uid: str, description: str, number: int, index: int) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    header = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    header.SOPClassUID, header.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    header.PatientName, header.PatientID, header.PatientBirthDate, header.PatientSex = "Test^Fixture", "FIXTURE-1", "", "M"
    header.StudyInstanceUID, header.StudyID, header.StudyDate, header.StudyTime = STUDY_UID, "1", "20260101", "120000"
    header.AccessionNumber, header.ReferringPhysicianName, header.StudyDescription = "", "", "MRI prostate"
    header.SeriesInstanceUID, header.SeriesNumber, header.SeriesDescription = series_uid, number, description
    header.Modality, header.Manufacturer, header.InstanceNumber = "MR", "fixture", index + 1
    header.FrameOfReferenceUID, header.PositionReferenceIndicator = FRAME_OF_REFERENCE_UID, ""
    header.SamplesPerPixel, header.PhotometricInterpretation = 1, "MONOCHROME2"
    header.BitsAllocated, header.BitsStored, header.HighBit, header.PixelRepresentation = 16, 16, 15, 0
    return header


def read_headers(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path, stop_before_pixels=True) for path in sorted(folder.rglob("*.dcm"))]
