"""Which software, method and model files produced a segmentation (for the report, JSON and DICOM SEG)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..core.catalog import CatalogEntry
from ..core.checksums import sha256_of

SOFTWARE = "SAMProstateSDG"
SHA256_PREFIX = 12  # characters of the SHA-256 shown on the report and in the SEG


@dataclass(frozen=True)
class ModelFile:
    role: str  # sam, coarse, method
    id: str  # catalog id, or the file name of a user's checkpoint
    sha256: str


@dataclass(frozen=True)
class Provenance:
    method: str
    method_title: str
    models: tuple[ModelFile, ...]
    software: str = SOFTWARE

    version: str = __version__

    def parameters(self) -> dict[str, str]:
        """Name → value, without commas (DICOM's Algorithm Parameters joins them with commas)."""
        return {"method": self.method} | {f"{model.role} model": f"{model.id} sha256:{model.sha256[:SHA256_PREFIX]}" for model in self.models}

    def to_json(self) -> dict:
        return {
            "software": self.software,
            "version": self.version,
            "method": self.method,
            "method_title": self.method_title,
            "models": [{"role": model.role, "id": model.id, "sha256": model.sha256} for model in self.models],
        }


def model_file(role: str, checkpoint: Path | None, shipped: CatalogEntry) -> ModelFile:
    """A user's checkpoint (hashed here), or the shipped model of that role."""
    if checkpoint is not None:
        return ModelFile(role, Path(checkpoint).name, sha256_of(checkpoint))
    return ModelFile(role, shipped.id, shipped.sha256)
