"""Which software, method and model files produced a segmentation (for the report, JSON and DICOM SEG)."""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from ..core.catalog import BOX_METHODS, METHOD_TITLES, METHODS, catalog, default_entry
from ..core.checksums import sha256_of

SOFTWARE = "SAMProstateSDG"
DISTRIBUTION = "samprostate-sdg"
SHA256_PREFIX = 12  # characters of the SHA-256 shown on the report and in the SEG


@dataclass(frozen=True)
class ModelFile:
    role: str  # sam, coarse, method
    id: str  # catalog id, or the file name of a user's checkpoint
    sha256: str


@dataclass(frozen=True)
class Provenance:
    method: str
    models: tuple[ModelFile, ...]
    software: str = SOFTWARE

    @property
    def version(self) -> str:
        try:
            return importlib.metadata.version(DISTRIBUTION)
        except importlib.metadata.PackageNotFoundError:
            return "unknown (not installed)"

    @property
    def method_title(self) -> str:
        return METHOD_TITLES[self.method]

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


def provenance_for(method: str, sam_checkpoint: Path | None = None, coarse_checkpoint: Path | None = None) -> Provenance:
    """The model files a ``segment`` run with these options uses (a user's checkpoint is hashed here)."""
    models = [_model("sam", sam_checkpoint)]
    if method in BOX_METHODS:
        models.append(_model("coarse", coarse_checkpoint))
    if METHODS[method] is not None:
        entry = catalog()[METHODS[method]]
        models.append(ModelFile("method", entry.id, entry.sha256))
    return Provenance(method, tuple(models))


def _model(kind: str, checkpoint: Path | None) -> ModelFile:
    if checkpoint is not None:
        return ModelFile(kind, Path(checkpoint).name, sha256_of(checkpoint))
    entry = default_entry(kind)
    return ModelFile(kind, entry.id, entry.sha256)
