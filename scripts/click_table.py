"""Merge ``evaluate --clicks`` JSON files (e.g. the box-edit baseline and the interactive decoder, run apart) into one table.

    python scripts/click_table.py runs/clicks_*.json > clicks.md
"""

import argparse
import json
from pathlib import Path

from SAMProstateSDGLib.apps.click_evaluation import CaseClicks, markdown

SPLIT_ORDER = {"unseen": 0, "source-extra": 1}


def merged_table(paths: list[Path]) -> str:
    """The click tables of all the files' cases, unseen first, up to the smallest click count among them."""
    results: list[CaseClicks] = []
    clicks = min(json.loads(path.read_text(encoding="utf-8"))["clicks"] for path in paths)
    for path in paths:
        results += [CaseClicks(**case) for case in json.loads(path.read_text(encoding="utf-8"))["cases"]]
    results.sort(key=lambda result: (SPLIT_ORDER.get(result.split, 2), result.decoder, result.case))
    return markdown(results, clicks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="+", help="JSON files written by samprostate evaluate --clicks N --output NAME.md")
    print(merged_table(parser.parse_args().results))


if __name__ == "__main__":
    main()
