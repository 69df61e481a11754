"""The README's generated tables are what the committed results files render to (scripts/readme_tables.py), and the
check fails, naming the line, when a table is edited by hand or its results change."""

import re
import runpy
import shlex
import sys
from types import SimpleNamespace

import pytest

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "readme_tables.py"


@pytest.fixture
def readme_tables(monkeypatch, capsys):
    """Run the script as its command line does, in this process (tests/test_scripts.py runs it as a new one):
    its exit status and what it wrote to stderr."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # its sibling scripts, as when it runs from scripts/

    def run(*arguments) -> SimpleNamespace:
        monkeypatch.setattr(sys, "argv", [str(SCRIPT), *map(str, arguments)])
        try:
            runpy.run_path(str(SCRIPT), run_name="__main__")
            status = 0
        except SystemExit as exit:
            status = exit.code
        return SimpleNamespace(returncode=status, stderr=capsys.readouterr().err)

    return run


def test_the_readme_tables_match_the_committed_results_files(readme_tables):
    result = readme_tables("--check")
    assert result.returncode == 0, result.stderr
    specs = re.findall(r"^<!-- generated: (.+?) -->$", (ROOT / "README.md").read_text(encoding="utf-8"), re.MULTILINE)
    named = {ROOT / argument for spec in specs for argument in shlex.split(spec)[1:] if "=" not in argument}
    assert set((ROOT / "results").glob("*.json")) == named  # every committed results file backs a table, and only those


def test_a_stale_table_fails_the_check_with_its_line_and_write_renders_it(readme_tables, tmp_path):
    readme = tmp_path / "README.md"
    spec = f"bench {shlex.quote(str(ROOT / 'results' / 'bench.json'))}"
    readme.write_text(f"# Speed\n\n<!-- generated: {spec} -->\n\n| Stage | naive |\n|---|---|\n| total | 1.00 s |\n\n<!-- end generated -->\n\nText kept.\n", encoding="utf-8")
    stale = readme_tables("--check", "--readme", readme)
    assert stale.returncode == 1
    assert len(stale.stderr.strip().splitlines()) == 1 and "at line 5: '| Stage | naive |' should be 'Machine: x86_64, 2 torch threads" in stale.stderr
    assert readme_tables("--write", "--readme", readme).returncode == 0
    text = readme.read_text(encoding="utf-8")
    assert "| speed-up vs naive | 1.00× | 1.61× | 1.75× | 4.23× | 4.04× | 3.22× | 6.11× |" in text and "| total | 1.00 s |" not in text
    assert text.startswith(f"# Speed\n\n<!-- generated: {spec} -->\n\nMachine: ") and text.endswith("\n\n<!-- end generated -->\n\nText kept.\n")
    assert readme_tables("--check", "--readme", readme).returncode == 0


def test_a_block_without_its_results_file_or_renderer_is_an_error(readme_tables, tmp_path):
    readme = tmp_path / "README.md"
    for spec, message in [("bench results/missing.json", "bench: no results file"), ("speed results/bench.json", "unknown kind 'speed'")]:
        readme.write_text(f"<!-- generated: {spec} -->\n\n<!-- end generated -->\n", encoding="utf-8")
        result = readme_tables("--check", "--readme", readme)
        assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    readme.write_text("<!-- generated: bench results/bench.json -->\n\nno end marker\n", encoding="utf-8")
    assert "has no '<!-- end generated -->' after it" in readme_tables("--write", "--readme", readme).stderr
    assert readme.read_text(encoding="utf-8") == "<!-- generated: bench results/bench.json -->\n\nno end marker\n"
