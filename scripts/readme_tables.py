"""Render the README's generated tables from the committed results files (results/*.json), or check that they match.

Usage: python scripts/readme_tables.py --check    (exit 1, naming the first differing line, when a table is stale)
       python scripts/readme_tables.py --write    (rewrite every generated block)

A generated block in README.md lies between two comment lines, each followed or preceded by an empty line
(so that Markdown never reads a comment as a table row):

    <!-- generated: KIND FILE... [NAME=VALUE] -->

    <!-- end generated -->

FILE paths are relative to the README. KIND is the code that rendered the table when it was measured:
  evaluate  apps/evaluation.markdown_table of `samprostate evaluate --output NAME.md` (NAME.json)
  bench     apps/bench.markdown_report of `samprostate bench --output NAME.md` (NAME.json)
  clicks    scripts/click_table.py over `samprostate evaluate --clicks N --output NAME.md` files (NAME.json)
  ablation  scripts/robustness_tables.py: mean Dice (worst case) per shift and row, of a robustness JSON
            (`samprostate evaluate --shifts --output NAME.md`, scripts/ablate_levers.py)
  hd95      scripts/robustness_tables.py: one row's (row=NAME) mean Dice, worst case and HD95 per shift
  proxy     scripts/coarse_shift_proxy.py --table: coarse Dice and box placement per shift and checkpoint,
            for one component rule (rule=3d by default)
  compare   scripts/compare_coarse_suite.py: the default method with each coarse network, mean Dice (worst
            case) and HD95 per shift
  suites    scripts/compare_coarse_suite.py's table of one row (row=NAME, or row=A;B one per file) of several
            robustness JSONs (`samprostate evaluate --shifts`, e.g. before and after a model change); names=A;B titles
            them, cases=A,B keeps only those cases
  suite_flags  the confidence flags of each robustness JSON's method row (`samprostate evaluate --shifts`, its
            "flags"): slices, slices with Dice < 0.8, the share of them flagged, the share of all slices flagged and
            the share of the flagged slices with Dice < 0.8; names=A;B titles the rows
  training  the manifests `samprostate train-coarse` writes (OUTPUT/coarse.json): one row per run, its command,
            training time and validation Dice (and loss) per epoch; names=A;B titles the rows
  volume    scripts/volume_agreement.py --json: volume agreement with the reference masks per site, from every
            case's measurements
  parity    apps/bench.parity_markdown of `samprostate bench --parity --output NAME.md` (NAME.json)
  flags     scripts/suite_study.py signals: the confidence flags' share of bad slices caught and of all slices flagged
  trim      scripts/suite_study.py trim: mean Dice per split, clean and over the shifts, with the z extent ended by each rule
  margins   scripts/tune_box_proposal.py --json: mean Dice of SAM + proposed boxes per component filter and box margin
  proposals scripts/suite_study.py proposals: mean Dice per split, clean and over the shifts, per coarse threshold and box margin
  decoders  scripts/suite_study.py decoders: mean Dice per split, clean and over the shifts, per decoder of the shipped boxes
  smoothing scripts/suite_study.py smoothing: mean Dice per split, clean and over the shifts, per sigma of the smoothing of
            SAM's box logits along the slices
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from click_table import merged_table
from coarse_shift_proxy import table as proxy_table
from compare_coarse_suite import table as compare_table
from robustness_tables import ablation_table, hd95_table
from suite_study import decoder_table, flags_table, proposal_table, smoothing_table, trim_table
from tune_box_proposal import table as margins_table
from volume_agreement import table as volume_table

from SAMProstateSDGLib.apps.bench import markdown_report, parity_markdown
from SAMProstateSDGLib.apps.evaluation import from_json, markdown_table

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^<!-- generated: (?P<spec>.+?) -->\n.*?^<!-- end generated -->$", re.MULTILINE | re.DOTALL)
OPTION = re.compile(r"^(?P<name>[a-z_]+)=(?P<value>.*)$")


def _one(paths: list[Path]) -> dict:
    if len(paths) != 1:
        raise ValueError(f"takes one results file, not {len(paths)}")
    return json.loads(paths[0].read_text(encoding="utf-8"))


def training_table(paths: list[Path], names: str = "") -> str:
    """One row per training manifest: its command, time and validation Dice per epoch (long runs: first, last and best)."""
    titles = _titles(names, paths) if names else [path.stem for path in paths]
    lines = ["| run | command | time | RUNMC validation Dice per epoch (loss) |", "|---|---|---|---|"]
    for title, path in zip(titles, paths):
        manifest = json.loads(path.read_text(encoding="utf-8"))
        dice, loss = ([entry[key] for entry in manifest["history"]] for key in ("validation_dice", "loss"))
        lines.append(f"| {title} | `{manifest['command']}` | {manifest['training_seconds_last_run'] / 60:.1f} min | {_epochs(dice, best=True)} ({_epochs(loss)}) |")
    return "\n".join(lines)


def suites_table(paths: list[Path], row: str, names: str, cases: str = "") -> str:
    """One row (a method) of several robustness JSONs side by side, as ``compare`` renders coarse networks;
    ``row=A;B`` names each file's row (one name: the same row in every file), ``cases=A,B`` keeps only those cases."""
    rows = row.split(";")
    if len(rows) == 1:
        rows *= len(paths)
    if len(rows) != len(paths):
        raise ValueError(f"{len(rows)} rows for {len(paths)} results files")
    kept = set(cases.split(",")) if cases else None
    scores = {}
    for title, name, path in zip(_titles(names, paths), rows, paths):
        by_shift = json.loads(path.read_text(encoding="utf-8"))["scores"][name]
        scores[title] = {shift: {case: value for case, value in by_case.items() if kept is None or case in kept} for shift, by_case in by_shift.items()}
    return compare_table(scores)


def suite_flags_table(paths: list[Path], names: str) -> str:
    """One row per robustness JSON: how its method's confidence flags did over all its cases and shifts."""
    lines = ["| method | slices | slices with Dice < 0.8 | of them flagged | all slices flagged | flagged slices with Dice < 0.8 |", "|---|---|---|---|---|---|"]
    for title, path in zip(_titles(names, paths), paths):
        (flags,) = json.loads(path.read_text(encoding="utf-8"))["flags"].values()
        caught, flagged = flags["low_dice_flagged_share"] * flags["low_dice_slices"], flags["flagged_share"] * flags["slices"]
        precision = f"{caught / flagged:.1%}" if flagged else "n/a"
        lines.append(f"| {title} | {flags['slices']} | {flags['low_dice_slices']} | {flags['low_dice_flagged_share']:.1%} | {flags['flagged_share']:.1%} | {precision} |")
    return "\n".join(lines)


def _titles(names: str, paths: list[Path]) -> list[str]:
    """``names=A;B``: one title per results file."""
    titles = names.split(";")
    if len(titles) != len(paths):
        raise ValueError(f"{len(titles)} names for {len(paths)} results files")
    return titles


def _epochs(values: list[float], best: bool = False) -> str:
    """Every epoch's value, or for a long run the first and last (and the highest, with its epoch)."""
    if len(values) <= 4:
        return " → ".join(f"{value:.3f}" for value in values)
    highest = max(range(len(values)), key=values.__getitem__)
    return f"{values[0]:.3f} → … → {values[-1]:.3f}" + (f", best {values[highest]:.3f} at epoch {highest + 1} of {len(values)}" if best else "")


RENDERERS: dict[str, Callable[..., str]] = {
    "evaluate": lambda paths: markdown_table(from_json(_one(paths))),
    "bench": lambda paths: markdown_report(_one(paths)),
    "clicks": merged_table,
    "ablation": lambda paths: ablation_table(_one(paths)),
    "hd95": lambda paths, row: hd95_table(_one(paths), row),
    "proxy": lambda paths, rule="3d": proxy_table(paths, rule),
    "compare": lambda paths: compare_table(_one(paths)["scores"]),
    "suites": suites_table,
    "suite_flags": suite_flags_table,
    "training": training_table,
    "volume": lambda paths: volume_table(_one(paths)),
    "flags": lambda paths: flags_table(_one(paths)["flags"]),
    "parity": lambda paths: parity_markdown(_one(paths)),
    "margins": lambda paths: margins_table(_one(paths)),
    "trim": lambda paths: trim_table(_one(paths)),
    "proposals": lambda paths: proposal_table(_one(paths)),
    "decoders": lambda paths: decoder_table(_one(paths)),
    "smoothing": lambda paths: smoothing_table(_one(paths)),
}


class SpecError(Exception):
    """A generated block that names an unknown kind, a missing file or a wrong option."""


def render(spec: str, folder: Path) -> str:
    """The block's text (ending in a newline) as its renderer makes it from its files."""
    kind, *arguments = shlex.split(spec)
    if kind not in RENDERERS:
        raise SpecError(f"unknown kind {kind!r} (known: {', '.join(RENDERERS)})")
    options = {match["name"]: match["value"] for argument in arguments if (match := OPTION.match(argument))}
    paths = [folder / argument for argument in arguments if not OPTION.match(argument)]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise SpecError(f"{kind}: no results file {', '.join(missing)}")
    try:
        return RENDERERS[kind](paths, **options).rstrip("\n") + "\n"
    except (TypeError, ValueError, KeyError) as error:
        raise SpecError(f"{kind} {' '.join(arguments)}: {error}") from None


def rendered_readme(text: str, folder: Path) -> str:
    """The README with every generated block re-rendered; SpecError for an unterminated block."""
    if len(re.findall(r"^<!-- generated: ", text, re.MULTILINE)) != len(BLOCK.findall(text)):
        raise SpecError("a '<!-- generated: ... -->' line has no '<!-- end generated -->' after it")
    return BLOCK.sub(lambda match: f"<!-- generated: {match['spec']} -->\n\n{render(match['spec'], folder)}\n<!-- end generated -->", text)


def first_difference(current: str, rendered: str) -> str:
    """Where the README first departs from its results files, as one line."""
    for number, (line, expected) in enumerate(zip(current.splitlines(), rendered.splitlines()), start=1):
        if line != expected:
            return f"line {number}: {line[:80]!r} should be {expected[:80]!r}"
    return f"it has {len(current.splitlines())} lines where its results give {len(rendered.splitlines())}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="exit 1 when a generated table differs from its results files")
    mode.add_argument("--write", action="store_true", help="rewrite the generated tables from their results files")
    parser.add_argument("--readme", type=Path, default=README, help="the Markdown file (default: the repository's README.md)")
    arguments = parser.parse_args()
    current = arguments.readme.read_text(encoding="utf-8")
    try:
        rendered = rendered_readme(current, arguments.readme.parent)
    except SpecError as error:
        print(f"readme_tables: error: {arguments.readme}: {error}", file=sys.stderr)
        sys.exit(2)
    if arguments.write:
        if rendered != current:
            arguments.readme.write_text(rendered, encoding="utf-8")
        print(f"{arguments.readme}: {len(BLOCK.findall(current))} generated blocks {'rewritten' if rendered != current else 'already current'}")
    elif rendered != current:
        print(f"{arguments.readme} differs from its results files at {first_difference(current, rendered)}; "
              f"run python scripts/readme_tables.py --write", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
