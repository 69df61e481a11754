"""SAMProstateSDG backend: prostate segmentation on T2 MRI with SAM prompted by a coarse network."""

# The one place the version is written: pyproject.toml reads it (``[tool.setuptools.dynamic]``), and the
# reports and DICOM SEGs name it, also inside Slicer, where this package is a module folder, not an install.
__version__ = "0.1.0"
