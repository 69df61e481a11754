"""Every script in scripts/ still imports what it uses from the backend and answers --help (they are run by hand, so
nothing else would notice when a refactor breaks one)."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPTS = sorted((ROOT / "scripts").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[path.stem for path in SCRIPTS])
def test_the_script_imports_and_answers_help(script):
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, encoding="utf-8", timeout=300,
                            env=os.environ | {"PYTHONPATH": str(ROOT / "SAMProstateSDG")})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout
