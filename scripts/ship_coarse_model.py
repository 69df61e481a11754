"""Ship a trained coarse network, or an ensemble of several: write it and its manifest into the package.

Usage: python scripts/ship_coarse_model.py --run runs/coarse-dg [--run runs/coarse-lc ...] [--title TEXT]
Replaces models/coarse_resnet18_runmc.pt and .json and updates the catalog's checksum and title for the
coarse entry. One --run: its checkpoint and manifest as training wrote them (with the shipped file name).
Several: one ensemble checkpoint (``coarse_net.save_coarse_ensemble``: the networks' probabilities are
averaged) whose manifest holds each run's manifest. The manifest and the catalog must pass
models/manifest.schema.json and catalog.schema.json; nothing is written otherwise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from SAMProstateSDGLib.core.catalog import CATALOG_SCHEMA, MANIFEST_SCHEMA, MODELS_FOLDER, default_entry, schema_errors
from SAMProstateSDGLib.core.checksums import sha256_of
from SAMProstateSDGLib.modeling.coarse_net import save_coarse_ensemble


def run_manifest(run: Path) -> dict:
    manifest = json.loads((run / "coarse.json").read_text())
    if manifest["sha256"] != sha256_of(run / "coarse.pt"):
        raise SystemExit(f"{run / 'coarse.pt'} does not match its manifest")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, action="append", required=True, help="a train-coarse output folder (coarse.pt, coarse.json); repeat for an ensemble")
    parser.add_argument("--title", help="new catalog title")
    arguments = parser.parse_args()
    entry = default_entry("coarse")
    members = [run_manifest(run) for run in arguments.run]
    with tempfile.TemporaryDirectory() as folder:
        if len(members) == 1:
            built, manifest = arguments.run[0] / "coarse.pt", {**members[0], "file": entry.path.name}
        else:
            built = Path(folder) / entry.path.name
            save_coarse_ensemble(built, [run / "coarse.pt" for run in arguments.run])
            command = "python scripts/ship_coarse_model.py " + " ".join(f"--run {run}" for run in arguments.run)
            manifest = {"model": "coarse-ensemble", "members": members, "command": command, "file": entry.path.name, "sha256": sha256_of(built)}
        catalog_path = MODELS_FOLDER / "catalog.json"
        catalog = json.loads(catalog_path.read_text())
        for item in catalog:
            if item["id"] == entry.id:
                item["sha256"] = manifest["sha256"]
                item["title"] = arguments.title or item["title"]
        errors = schema_errors(manifest, MANIFEST_SCHEMA) + schema_errors(catalog, CATALOG_SCHEMA)
        if errors:
            raise SystemExit("not shipped: " + "; ".join(errors))
        shutil.copyfile(built, entry.path)
    entry.path.with_suffix(".json").write_text(json.dumps(manifest, indent=2) + "\n")
    catalog_path.write_text(json.dumps(catalog, indent=2) + "\n")
    print(f"shipped {entry.path} ({manifest['sha256']})")


if __name__ == "__main__":
    main()
