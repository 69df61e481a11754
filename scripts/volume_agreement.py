"""Gland volume agreement with the reference masks: our segmentation and the ellipsoid formula.

Usage (the README's table):
    samprostate segment $(awk -F, 'NR > 1 {print "../shared/data/prostate/" $4}' ../shared/data/prostate/cases.csv) \
        -o runs/volume-eval/zero-shot          # a batch: one NAME.nii.gz per case
    python scripts/volume_agreement.py --data ../shared/data/prostate --predictions runs/volume-eval/zero-shot \
        --json results/volume_zero_shot.json

Zone volumes (the README's SAMed table; the 12 cases outside the training site):
    samprostate segment $(awk -F, 'NR > 1 && $3 != "source" {print "../shared/data/prostate/" $4}' ../shared/data/prostate/cases.csv) \
        -o runs/volume-eval/samed --method samed
    python scripts/volume_agreement.py --data ../shared/data/prostate --predictions runs/volume-eval/samed --zonal \
        --json results/volume_samed.json

The rows compare with the reference mask's voxel volume, per site (the training site marked as
such), over the sites outside the training site, and over all sites: the
ellipsoid formula on the reference mask's own diameters (every case: what a reader measuring by
hand gets at best), and, on the cases with a prediction ``NAME.nii.gz`` in ``--predictions``, the
voxel volume of our segmentation and the ellipsoid formula on its diameters. ``--zonal`` (SAMed
predictions) gives the transition-zone, peripheral-zone and whole-gland rows instead, on the sites with
predictions. ``--json FILE`` keeps every case's measurements; ``table`` renders the rows from such a file
(scripts/readme_tables.py, kind ``volume``).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

import SimpleITK as sitk

from SAMProstateSDGLib.apps.volume_agreement import Agreement, agreement, markdown_table
from SAMProstateSDGLib.io.dataset import find_cases
from SAMProstateSDGLib.io.measurements import ZONE_NAMES, GlandMeasurements, measure_image

TRAINING_SPLIT = "source"  # the site the shipped networks were trained on (RUNMC): its rows are in-domain
Pair = tuple[str, GlandMeasurements | None, GlandMeasurements]  # case, ours (None without a prediction), reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with cases.csv")
    parser.add_argument("--predictions", type=Path, help="folder of NAME.nii.gz label volumes from samprostate segment (else: reference rows only)")
    parser.add_argument("--zonal", action="store_true", help="the predictions are zonal (1 TZ, 2 PZ): zone and whole-gland rows")
    parser.add_argument("--per-case", action="store_true", help="also print each case's volumes")
    parser.add_argument("--json", type=Path, help="also write every case's measurements here (what the table is computed from)")
    arguments = parser.parse_args()
    cases = []
    for case in find_cases(arguments.data):
        image, reference_labels = case.read()
        prediction_file = arguments.predictions / f"{case.name}.nii.gz" if arguments.predictions else None
        ours = None
        if prediction_file is not None and prediction_file.is_file():
            predicted_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(prediction_file)))
            if predicted_labels.shape != reference_labels.shape:
                sys.exit(f"{prediction_file} is {predicted_labels.shape}, the reference {reference_labels.shape}")
            ours = measure_image(predicted_labels, image, zonal=arguments.zonal)
        cases.append({"case": case.name, "site": case.site, "training_site": case.split == TRAINING_SPLIT,
                      "reference": _figures(measure_image(reference_labels, image, zonal=True)), "ours": ours and _figures(ours)})
    results = {"predictions": arguments.predictions and str(arguments.predictions), "zonal": arguments.zonal, "cases": cases}
    if arguments.json:
        arguments.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(table(results))
    if arguments.per_case:
        print()
        print(_per_case_table(_pairs(results)))


def table(results: dict) -> str:
    """The agreement rows of a ``--json`` file: per site (the training site marked), outside the training site, all sites."""
    pairs: dict[str, list[Pair]] = {}
    for entry, pair in zip(results["cases"], _pairs(results)):
        pairs.setdefault(f"{entry['site']} (training site)" if entry["training_site"] else entry["site"], []).append(pair)
    groups = dict(pairs)
    outside = [site for site in pairs if not site.endswith("(training site)")]
    if len(outside) > 1:
        groups["outside the training site"] = [pair for site in outside for pair in pairs[site]]
    if len(pairs) > 1:
        groups["all sites"] = [pair for site_pairs in pairs.values() for pair in site_pairs]
    rows: dict[str, Agreement] = {}
    predicted_sets: list[set[str]] = []
    for site, site_pairs in groups.items():
        if results["zonal"]:
            predicted = {name for name, ours, _ in site_pairs if ours is not None}
            if predicted in predicted_sets:  # the same cases as a group above (all sites = outside the training site)
                continue
            predicted_sets.append(predicted)
        rows.update({f"{site}: {title}": row for title, row in _rows(site_pairs, results["zonal"]).items()})
    return markdown_table(rows)


def _rows(pairs: list[Pair], zonal: bool) -> dict[str, Agreement]:
    """Whole gland: the reference mask's ellipsoid on every case, our rows on the cases with a prediction (two or more).
    Zonal: each zone's and the whole gland's volume on the cases with a prediction."""
    rows = {} if zonal else {"ellipsoid formula on the reference mask": agreement([r.ellipsoid_volume_ml for _, _, r in pairs], [r.volume_ml for _, _, r in pairs])}
    predicted = [(ours, reference) for _, ours, reference in pairs if ours is not None]
    if len(predicted) < 2:
        return rows
    references = [reference.volume_ml for _, reference in predicted]
    if zonal:
        for zone in ZONE_NAMES.values():
            rows[zone] = agreement([ours.zone_volumes_ml[zone] for ours, _ in predicted], [reference.zone_volumes_ml[zone] for _, reference in predicted])
        rows["whole gland"] = agreement([ours.volume_ml for ours, _ in predicted], references)
        return rows
    rows["our segmentation"] = agreement([ours.volume_ml for ours, _ in predicted], references)
    rows["ellipsoid formula on our segmentation"] = agreement([ours.ellipsoid_volume_ml or 0.0 for ours, _ in predicted], references)
    return rows


def _figures(measured: GlandMeasurements) -> dict:
    return {key: value for key, value in asdict(measured).items() if key != "psa_ng_ml"}


def _pairs(results: dict) -> list[Pair]:
    return [(entry["case"], entry["ours"] and GlandMeasurements(**entry["ours"]), GlandMeasurements(**entry["reference"])) for entry in results["cases"]]


def _per_case_table(pairs: list[Pair]) -> str:
    lines = [
        "| Case | Reference (mL) | Ours (mL) | Ellipsoid, reference (mL) | Ellipsoid, ours (mL) | Reference TR / AP / CC (mm) | Ours TR / AP / CC (mm) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, ours, reference in pairs:
        cells = [_millilitres(reference.volume_ml), _millilitres(ours and ours.volume_ml), _millilitres(reference.ellipsoid_volume_ml),
                 _millilitres(ours and ours.ellipsoid_volume_ml), _diameters(reference), _diameters(ours)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _millilitres(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _diameters(measured: GlandMeasurements | None) -> str:
    if measured is None or measured.transverse_mm is None:
        return "n/a"
    return " / ".join(f"{value:.0f}" for value in (measured.transverse_mm, measured.anteroposterior_mm, measured.craniocaudal_mm))


if __name__ == "__main__":
    main()
