"""The Slicer extension's CMake lists, files and .ui agree with each other and with the module code."""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "SAMProstateSDG"
MODULE_NAME = "SAMProstateSDG"
PACKAGED_SUFFIXES = {".py", ".ui", ".png", ".json"}


def cmake_set(text: str, variable: str) -> list[str]:
    """The items of ``set(variable ...)`` with ${MODULE_NAME} expanded."""
    match = re.search(rf"set\(\s*{variable}\s+([^)]*)\)", text)
    assert match, f"set({variable} ...) is missing"
    return [item.replace("${MODULE_NAME}", MODULE_NAME) for item in match.group(1).split()]


def module_cmake() -> str:
    return (MODULE / "CMakeLists.txt").read_text()


def listed_files() -> list[str]:
    text = module_cmake()
    return cmake_set(text, "MODULE_PYTHON_SCRIPTS") + cmake_set(text, "MODULE_PYTHON_RESOURCES")


def test_every_listed_file_exists():
    missing = [name for name in listed_files() if not (MODULE / name).is_file()]
    assert not missing, f"listed in SAMProstateSDG/CMakeLists.txt but missing: {missing}"


def test_every_packaged_file_is_listed():
    listed = set(listed_files())
    candidates = [
        path.relative_to(MODULE).as_posix()
        for path in MODULE.rglob("*")
        if path.is_file()
        and path.suffix in PACKAGED_SUFFIXES
        and "__pycache__" not in path.parts
        and not path.relative_to(MODULE).as_posix().startswith("Testing/")
        and not path.parent.name.endswith(".egg-info")
    ]
    unlisted = sorted(set(candidates) - listed)
    assert not unlisted, f"not listed in SAMProstateSDG/CMakeLists.txt: {unlisted}"


def test_catalog_model_files_are_listed():
    import json

    catalog = json.loads((MODULE / "SAMProstateSDGLib" / "models" / "catalog.json").read_text())
    shipped = [f"SAMProstateSDGLib/models/{entry['file']}" for entry in catalog if "file" in entry]
    unlisted = sorted(set(shipped) - set(listed_files()))
    assert not unlisted, f"models in catalog.json not listed in SAMProstateSDG/CMakeLists.txt: {unlisted}"


def test_cmake_wiring():
    top = (ROOT / "CMakeLists.txt").read_text()
    for required in (
        "find_package(Slicer REQUIRED)",
        "add_subdirectory(SAMProstateSDG)",
        "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
        "include(${Slicer_EXTENSION_CPACK})",
        'set(EXTENSION_DEPENDS "PyTorch")',
        'set(EXTENSION_CATEGORY "Segmentation")',
    ):
        assert required in top, f"top-level CMakeLists.txt lacks {required}"
    assert "slicerMacroBuildScriptedModule(" in module_cmake()
    assert "add_subdirectory(Python)" in (MODULE / "Testing" / "CMakeLists.txt").read_text()
    testing = (MODULE / "Testing" / "Python" / "CMakeLists.txt").read_text()
    script = re.search(r"slicer_add_python_unittest\(SCRIPT\s+(\S+)\)", testing).group(1)
    resolved = script.replace("${CMAKE_CURRENT_SOURCE_DIR}", str(MODULE / "Testing" / "Python")).replace("${MODULE_NAME}", MODULE_NAME)
    assert Path(resolved).resolve() == MODULE / f"{MODULE_NAME}.py"


def ui_tree() -> ElementTree.Element:
    return ElementTree.parse(MODULE / "Resources" / "UI" / f"{MODULE_NAME}.ui").getroot()


def test_widget_uses_only_widgets_in_the_ui():
    names = {widget.get("name") for widget in ui_tree().iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", (MODULE / f"{MODULE_NAME}.py").read_text()))
    assert used and used <= names, f"missing from the .ui: {sorted(used - names)}"


def test_ui_parameter_names_match_the_parameter_node():
    bound = {
        widget.findtext("property[@name='SlicerParameterName']/string")
        for widget in ui_tree().iter("widget")
        if widget.find("property[@name='SlicerParameterName']") is not None
    }
    source = ast.parse((MODULE / f"{MODULE_NAME}.py").read_text())
    parameter_class = next(node for node in source.body if isinstance(node, ast.ClassDef) and node.name == f"{MODULE_NAME}ParameterNode")
    fields = {statement.target.id for statement in parameter_class.body if isinstance(statement, ast.AnnAssign)}
    # the Trained model list holds registered model ids the widget adds and reads itself (updateTrainedModelSelector)
    assert bound == fields - {"trainedModel"}


def cmake_string(variable: str) -> str:
    match = re.search(rf'set\({variable} "([^"]*)"\)', (ROOT / "CMakeLists.txt").read_text())
    assert match, f"set({variable} ...) is missing from the top-level CMakeLists.txt"
    return match.group(1)


def test_extensions_index_entry_agrees_with_the_cmake_metadata():
    import json

    entry = json.loads((ROOT / f"{MODULE_NAME}.json").read_text())
    allowed = {"$schema", "build_dependencies", "build_subdirectory", "category", "enabled", "scm_revision", "scm_type", "scm_url", "tier"}
    assert {"$schema", "category", "scm_url"} <= set(entry) <= allowed  # the schema has additionalProperties: false
    assert entry["category"] == cmake_string("EXTENSION_CATEGORY")
    assert entry["build_dependencies"] == cmake_string("EXTENSION_DEPENDS").split()
    assert entry["scm_url"].removesuffix(".git") == cmake_string("EXTENSION_HOMEPAGE")


def test_screenshots_named_in_cmake_are_in_the_repository():
    for url in cmake_string("EXTENSION_SCREENSHOTURLS").split():
        assert (ROOT / "Screenshots" / url.rsplit("/", 1)[1]).is_file(), url


def test_sample_data_is_fetched_by_its_checksum():
    source = (MODULE / f"{MODULE_NAME}.py").read_text()
    digest = re.search(r'SAMPLE_SHA256 = "([0-9a-f]{64})"', source).group(1)
    assert '"uris": f"https://github.com/Slicer/SlicerTestingData/releases/download/SHA256/{SAMPLE_SHA256}"' in source
    assert '"checksums": f"SHA256:{SAMPLE_SHA256}"' in source and len(digest) == 64


def test_the_module_folder_holds_one_python_file():
    """Slicer's scripted-module factory loads every top-level .py of the module folder as a module."""
    assert sorted(path.name for path in MODULE.glob("*.py")) == [f"{MODULE_NAME}.py"]
