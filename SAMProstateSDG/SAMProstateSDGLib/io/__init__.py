"""Reading and writing: volumes, DICOM in and SEG out, datasets, boxes JSON, overlays, reports, measurements."""
