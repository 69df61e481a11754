"""Ship a trained interactive decoder: copy a ``train --method interactive`` run's checkpoint and manifest into the package.

Usage: python scripts/ship_interactive_model.py --run runs/interactive
Writes models/interactive_litemedsam_runmc.pt and .json (the manifest as training wrote it, with the shipped
file name) and adds or updates the catalog entry (kind "interactive-decoder"). The manifest and the catalog
must pass models/manifest.schema.json and catalog.schema.json; nothing is written otherwise.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from SAMProstateSDGLib.core.catalog import CATALOG_SCHEMA, INTERACTIVE_KIND, MANIFEST_SCHEMA, MODELS_FOLDER, schema_errors
from SAMProstateSDGLib.core.checksums import sha256_of

MODEL_ID = "interactive-litemedsam-runmc"
FILE = "interactive_litemedsam_runmc.pt"
TITLE = "Interactive: LiteMedSAM with its prompt encoder and a click decoder taught clicks and the fed-back mask on RUNMC (a box alone decodes as LiteMedSAM)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a train --method interactive output folder (interactive.pt, interactive.json)")
    arguments = parser.parse_args()
    manifest = json.loads((arguments.run / "interactive.json").read_text())
    if manifest["sha256"] != sha256_of(arguments.run / "interactive.pt"):
        raise SystemExit(f"{arguments.run / 'interactive.pt'} does not match its manifest")
    target = MODELS_FOLDER / FILE
    manifest["file"] = FILE
    catalog_path = MODELS_FOLDER / "catalog.json"
    entries = [item for item in json.loads(catalog_path.read_text()) if item["id"] != MODEL_ID]
    entries.append({"id": MODEL_ID, "kind": INTERACTIVE_KIND, "model_type": "litemedsam", "title": TITLE, "file": FILE, "sha256": manifest["sha256"]})
    errors = schema_errors(manifest, MANIFEST_SCHEMA) + schema_errors(entries, CATALOG_SCHEMA)
    if errors:
        raise SystemExit("not shipped: " + "; ".join(errors))
    shutil.copyfile(arguments.run / "interactive.pt", target)
    target.with_suffix(".json").write_text(json.dumps(manifest, indent=2) + "\n")
    catalog_path.write_text(json.dumps(entries, indent=2) + "\n")
    print(f"shipped {target} ({manifest['sha256']})")


if __name__ == "__main__":
    main()
