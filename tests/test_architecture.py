"""The package's shape: imports point down the layers, and only methods/ knows the methods by name."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT
from SAMProstateSDGLib.apps.cli import build_parser
from SAMProstateSDGLib.apps.training_process import COARSE, TRAINING_METHODS
from SAMProstateSDGLib.methods.registry import method, methods, runnable_methods, trainable_methods

LIB = ROOT / "SAMProstateSDG" / "SAMProstateSDGLib"


def test_imports_point_down_the_layers():
    """import-linter's layer contract (pyproject.toml): a module imports only from its own layer or below."""
    lint_imports = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint_imports), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, encoding="utf-8",
                            env=os.environ | {"PYTHONPATH": str(ROOT / "SAMProstateSDG")})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout


def _names_a_method(path: Path, ids: set[str]) -> list[str]:
    """String constants equal to a method id, and names of method-specific model classes, in one source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and node.value in ids:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
        if isinstance(node, ast.Name) and node.id in ("SAMedSegmenter", "DeSAMSegmenter"):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.id}")
    return found


def test_no_module_outside_methods_names_a_method():
    ids = set(methods())
    sources = [ROOT / "SAMProstateSDG" / "SAMProstateSDG.py", *(path for path in LIB.rglob("*.py") if "methods" not in path.relative_to(LIB).parts)]
    found = [hit for path in sources for hit in _names_a_method(path, ids)]
    assert not found, found
    # the check itself can fail: the method modules do name themselves
    assert _names_a_method(LIB / "methods" / "samed.py", ids)


def test_every_menu_comes_from_the_registry():
    commands = {action.dest: action for action in build_parser()._subparsers._group_actions}["command"].choices
    method_option = {action.dest: action for action in commands["segment"]._actions}["method"]
    assert tuple(method_option.choices) == tuple(runnable_methods())
    assert set(runnable_methods()) <= set(methods())
    train_option = {action.dest: action for action in commands["train"]._actions}["method"]
    assert tuple(train_option.choices) == tuple(trainable_methods())
    assert list(TRAINING_METHODS) == [COARSE, *trainable_methods()]
    for key, item in trainable_methods().items():
        assert TRAINING_METHODS[key].default_epochs == item.training.epochs
        assert TRAINING_METHODS[key].model_kind == item.model_kind


def test_each_method_runs_with_a_shipped_model_or_can_be_trained_and_its_segments_are_distinct():
    for item in methods().values():
        assert item.model_kind is None or item.shipped_model() is not None or item.training is not None, item.id
        assert len({segment.label for segment in item.segments}) == len(item.segments) >= 1
        assert item.takes_boxes or item.model_kind is not None  # a self-prompting method needs a trained model
    assert method("samed").zonal and not method("zero-shot").zonal
    assert [segment.name for segment in method("samed").segments] == ["transition zone", "peripheral zone"]


def test_the_interactive_method_reads_the_catalog_kind_its_model_is_shipped_as():
    from SAMProstateSDGLib.core.catalog import INTERACTIVE_KIND

    assert method("interactive").model_kind == INTERACTIVE_KIND
