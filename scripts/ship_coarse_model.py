"""Ship a trained coarse network: copy a train-coarse run's checkpoint and manifest into the package.

Usage: python scripts/ship_coarse_model.py --run runs/coarse-dg [--title TEXT] [--note KEY=VALUE ...]
Replaces models/coarse_resnet18_runmc.pt and .json (the manifest gets the shipped file name and
any notes) and updates the catalog's checksum and title for the coarse entry.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from SAMProstateSDGLib.core.catalog import MODELS_FOLDER, default_entry
from SAMProstateSDGLib.core.checksums import sha256_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a train-coarse output folder (coarse.pt, coarse.json)")
    parser.add_argument("--title", help="new catalog title")
    parser.add_argument("--note", action="append", default=[], help="KEY=VALUE added to the manifest, repeatable")
    arguments = parser.parse_args()
    entry = default_entry("coarse")
    manifest = json.loads((arguments.run / "coarse.json").read_text())
    if manifest["sha256"] != sha256_of(arguments.run / "coarse.pt"):
        raise SystemExit(f"{arguments.run / 'coarse.pt'} does not match its manifest")
    shutil.copyfile(arguments.run / "coarse.pt", entry.path)
    manifest.update({"file": entry.path.name, **dict(note.split("=", 1) for note in arguments.note)})
    entry.path.with_suffix(".json").write_text(json.dumps(manifest, indent=2) + "\n")
    catalog_path = MODELS_FOLDER / "catalog.json"
    catalog = json.loads(catalog_path.read_text())
    for item in catalog:
        if item["id"] == entry.id:
            item["sha256"] = manifest["sha256"]
            item["title"] = arguments.title or item["title"]
    catalog_path.write_text(json.dumps(catalog, indent=2) + "\n")
    print(f"shipped {entry.path} ({manifest['sha256']})")


if __name__ == "__main__":
    main()
