"""Merge ``evaluate --clicks`` JSON files (e.g. the box-edit baseline and the interactive decoder, run apart) into one table.

    python scripts/click_table.py runs/clicks_*.json > clicks.md
"""

import argparse
import json
from pathlib import Path

from SAMProstateSDGLib.apps.click_evaluation import CaseClicks, markdown

SPLIT_ORDER = {"unseen": 0, "source-extra": 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+", help="JSON files written by samprostate evaluate --clicks N --output NAME.md")
    arguments = parser.parse_args()
    results, clicks = [], None
    for path in arguments.results:
        data = json.loads(path.read_text())
        clicks = data["clicks"] if clicks is None else min(clicks, data["clicks"])
        results += [CaseClicks(**case) for case in data["cases"]]
    results.sort(key=lambda result: (SPLIT_ORDER.get(result.split, 2), result.decoder, result.case))
    print(markdown(results, clicks))


if __name__ == "__main__":
    main()
