"""Gland volume agreement with the reference masks: our segmentation and the ellipsoid formula.

Usage (the README's table):
    samprostate segment ../shared/data/prostate/*/Case*.nii.gz ../shared/data/prostate/Prostate158/P158-0*.nii.gz \
        -o runs/volume-eval/zero-shot          # a batch: one NAME.nii.gz per case
    python scripts/volume_agreement.py --data ../shared/data/prostate --predictions runs/volume-eval/zero-shot

Every case of ``--data`` with a prediction ``NAME.nii.gz`` in ``--predictions`` is measured; the
rows compare, per site and over all cases, with the reference mask's voxel volume: the voxel
volume of our segmentation, the ellipsoid formula on our segmentation's diameters, and the
ellipsoid formula on the reference mask's own diameters (what a reader measuring by hand gets at
best). ``--zonal`` (SAMed predictions) adds transition- and peripheral-zone volumes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from SAMProstateSDGLib.dataset import find_cases
from SAMProstateSDGLib.measurements import ZONE_NAMES, GlandMeasurements, measure_image
from SAMProstateSDGLib.volume_agreement import Agreement, agreement, markdown_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with cases.csv")
    parser.add_argument("--predictions", type=Path, required=True, help="folder of NAME.nii.gz label volumes from samprostate segment")
    parser.add_argument("--zonal", action="store_true", help="the predictions are zonal (1 TZ, 2 PZ): add zone volume rows")
    parser.add_argument("--per-case", action="store_true", help="also print each case's volumes")
    arguments = parser.parse_args()
    pairs: dict[str, list[tuple[str, GlandMeasurements, GlandMeasurements]]] = {}
    for case in find_cases(arguments.data):
        prediction_file = arguments.predictions / f"{case.name}.nii.gz"
        if not prediction_file.is_file():
            continue
        image, reference_labels = case.read()
        predicted_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(prediction_file)))
        if predicted_labels.shape != reference_labels.shape:
            sys.exit(f"{prediction_file} is {predicted_labels.shape}, the reference {reference_labels.shape}")
        ours = measure_image(predicted_labels, image, zonal=arguments.zonal)
        reference = measure_image(reference_labels, image, zonal=True)
        pairs.setdefault(case.site, []).append((case.name, ours, reference))
    if not pairs:
        sys.exit(f"no predictions NAME.nii.gz in {arguments.predictions} for the cases of {arguments.data}")
    groups = dict(pairs)
    if len(pairs) > 1:
        groups["all sites"] = [pair for site_pairs in pairs.values() for pair in site_pairs]
    print(markdown_table({f"{site}: {title}": row for site, site_pairs in groups.items() for title, row in _rows(site_pairs, arguments.zonal).items()}))
    if arguments.per_case:
        print()
        print(_per_case_table([pair for site_pairs in pairs.values() for pair in site_pairs]))


def _rows(pairs: list[tuple[str, GlandMeasurements, GlandMeasurements]], zonal: bool) -> dict[str, Agreement]:
    references = [reference.volume_ml for _, _, reference in pairs]
    rows = {
        "our segmentation": agreement([ours.volume_ml for _, ours, _ in pairs], references),
        "ellipsoid formula on our segmentation": agreement([ours.ellipsoid_volume_ml or 0.0 for _, ours, _ in pairs], references),
        "ellipsoid formula on the reference mask": agreement([reference.ellipsoid_volume_ml for _, _, reference in pairs], references),
    }
    if zonal:
        for zone in ZONE_NAMES.values():
            rows[f"our {zone}"] = agreement([ours.zone_volumes_ml[zone] for _, ours, _ in pairs], [reference.zone_volumes_ml[zone] for _, _, reference in pairs])
    return rows


def _per_case_table(pairs: list[tuple[str, GlandMeasurements, GlandMeasurements]]) -> str:
    lines = ["| Case | Reference (mL) | Ours (mL) | Ellipsoid, ours (mL) | Ellipsoid, reference (mL) | Reference TR / AP / CC (mm) |", "|---|---|---|---|---|---|"]
    for name, ours, reference in pairs:
        diameters = " / ".join(f"{value:.0f}" for value in (reference.transverse_mm, reference.anteroposterior_mm, reference.craniocaudal_mm))
        ellipsoid = "n/a" if ours.ellipsoid_volume_ml is None else f"{ours.ellipsoid_volume_ml:.1f}"
        lines.append(f"| {name} | {reference.volume_ml:.1f} | {ours.volume_ml:.1f} | {ellipsoid} | {reference.ellipsoid_volume_ml:.1f} | {diameters} |")
    volumes = np.array([[reference.volume_ml, ours.volume_ml] for _, ours, reference in pairs])
    lines.append(f"| mean | {volumes[:, 0].mean():.1f} | {volumes[:, 1].mean():.1f} | | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
