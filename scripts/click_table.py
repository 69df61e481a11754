"""Merge ``evaluate --clicks`` JSON files (e.g. the box-edit baseline and the interactive decoder, run apart) into one table.

    python scripts/click_table.py runs/clicks_*.json > clicks.md
"""

import json
import sys

from SAMProstateSDGLib.apps.click_evaluation import CaseClicks, markdown

results, clicks = [], None
for path in sys.argv[1:]:
    data = json.loads(open(path).read())
    clicks = data["clicks"] if clicks is None else min(clicks, data["clicks"])
    results += [CaseClicks(**case) for case in data["cases"]]
order = {"unseen": 0, "source-extra": 1}
results.sort(key=lambda result: (order.get(result.split, 2), result.decoder, result.case))
print(markdown(results, clicks))
