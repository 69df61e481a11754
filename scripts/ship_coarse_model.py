"""Ship a trained coarse network: copy a train-coarse run's checkpoint and manifest into the package.

Usage: python scripts/ship_coarse_model.py --run runs/coarse-dg [--title TEXT]
Replaces models/coarse_resnet18_runmc.pt and .json (the manifest as training wrote it, with the shipped
file name) and updates the catalog's checksum and title for the coarse entry. The manifest and the catalog
must pass models/manifest.schema.json and catalog.schema.json; nothing is written otherwise.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from SAMProstateSDGLib.core.catalog import CATALOG_SCHEMA, MANIFEST_SCHEMA, MODELS_FOLDER, default_entry, schema_errors
from SAMProstateSDGLib.core.checksums import sha256_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a train-coarse output folder (coarse.pt, coarse.json)")
    parser.add_argument("--title", help="new catalog title")
    arguments = parser.parse_args()
    entry = default_entry("coarse")
    manifest = json.loads((arguments.run / "coarse.json").read_text())
    if manifest["sha256"] != sha256_of(arguments.run / "coarse.pt"):
        raise SystemExit(f"{arguments.run / 'coarse.pt'} does not match its manifest")
    manifest["file"] = entry.path.name
    catalog_path = MODELS_FOLDER / "catalog.json"
    catalog = json.loads(catalog_path.read_text())
    for item in catalog:
        if item["id"] == entry.id:
            item["sha256"] = manifest["sha256"]
            item["title"] = arguments.title or item["title"]
    errors = schema_errors(manifest, MANIFEST_SCHEMA) + schema_errors(catalog, CATALOG_SCHEMA)
    if errors:
        raise SystemExit("not shipped: " + "; ".join(errors))
    shutil.copyfile(arguments.run / "coarse.pt", entry.path)
    entry.path.with_suffix(".json").write_text(json.dumps(manifest, indent=2) + "\n")
    catalog_path.write_text(json.dumps(catalog, indent=2) + "\n")
    print(f"shipped {entry.path} ({manifest['sha256']})")


if __name__ == "__main__":
    main()
