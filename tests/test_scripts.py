"""Every script in scripts/ still imports what it uses from the backend and answers --help (they are run by hand, so
nothing else would notice when a refactor breaks one).

All scripts run in one fresh process, each as ``__main__`` with its folder first on ``sys.path`` as ``python SCRIPT``
puts it: importing torch and MONAI once instead of once per script saves about 10 s a script."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPTS = sorted((ROOT / "scripts").glob("*.py"))

# Runs each script given as ``SCRIPT --help``; prints one JSON line per script: [path, exit code, stdout, error].
DRIVER = """
import contextlib, io, json, runpy, sys, traceback
sys.path.insert(0, sys.argv[1])
for script in sys.argv[2:]:
    sys.argv, output, code, error = [script, "--help"], io.StringIO(), None, ""
    try:
        with contextlib.redirect_stdout(output):
            runpy.run_path(script, run_name="__main__")
    except SystemExit as exit:
        code = exit.code
    except BaseException:
        error = traceback.format_exc()
    print(json.dumps([script, code, output.getvalue(), error]))
"""


@pytest.fixture(scope="module")
def answers() -> dict[str, tuple[object, str, str]]:
    result = subprocess.run([sys.executable, "-c", DRIVER, str(ROOT / "scripts"), *map(str, SCRIPTS)], capture_output=True, encoding="utf-8",
                            timeout=300, env=os.environ | {"PYTHONPATH": str(ROOT / "SAMProstateSDG")})
    assert result.returncode == 0, result.stderr[-2000:]
    return {script: (code, stdout, error) for script, code, stdout, error in map(json.loads, filter(lambda line: line.startswith('["'), result.stdout.splitlines()))}


@pytest.mark.parametrize("script", SCRIPTS, ids=[path.stem for path in SCRIPTS])
def test_the_script_imports_and_answers_help(script, answers):
    code, stdout, error = answers[str(script)]
    assert code == 0 and not error, error[-2000:]
    assert "usage:" in stdout
