"""Our JSON and CMake metadata against the checks of the Slicer Extensions Index.

The checks mirror Slicer/ExtensionsIndex scripts/check_description_files.py (main): check_category
(ACCEPTED_EXTENSION_CATEGORIES), check_scm_url_syntax (scheme git or https), check_git_repository_name
(the repository name must contain "slicer", unless listed as an exception),
check_cmakelists_content (project() name equals the description file name; EXTENSION_ICONURL and
every EXTENSION_SCREENSHOTURLS entry start with "http"), check_license_file (LICENSE, LICENCE,
License.txt, ... in the repository root), and check_dependencies (each build dependency is an
extension of the index; PyTorch is). Their network steps (cloning, downloading the schema, the
icon and the screenshots) cannot run here: the icon and screenshots are checked to be files of this
repository at the paths their URLs name, and the README lists what the maintainer does once the
public repository exists (topic 3d-slicer-extension, from the index's pull-request checklist).
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DESCRIPTION = ROOT / "SAMProstateSDG.json"
LICENSE_FILE_NAMES = ["LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt"]
ACCEPTED_CATEGORIES_USED_HERE = {"Segmentation"}  # one of the index's ACCEPTED_EXTENSION_CATEGORIES
INDEX_EXTENSIONS_WE_DEPEND_ON = {"PyTorch"}  # PyTorch.json exists in the index


def metadata() -> dict:
    return json.loads(DESCRIPTION.read_text())


def cmake() -> str:
    return (ROOT / "CMakeLists.txt").read_text()


def test_category_and_dependencies_are_known_to_the_index():
    assert metadata()["category"] in ACCEPTED_CATEGORIES_USED_HERE
    assert set(metadata()["build_dependencies"]) <= INDEX_EXTENSIONS_WE_DEPEND_ON


def test_scm_url_syntax_and_repository_name():
    url = metadata()["scm_url"]
    assert "://" in url and urllib.parse.urlsplit(url).scheme in ("git", "https")
    repository = os.path.splitext(urllib.parse.urlsplit(url).path.split("/")[-1])[0]
    assert "slicer" in repository.lower()
    assert repository == "Slicer" + DESCRIPTION.stem  # the convention: Slicer + extension name


def test_cmakelists_content():
    project = re.findall(r"project\s*\(\s*([^\s\)\n\r]+)", cmake(), re.IGNORECASE | re.MULTILINE)[0]
    assert project == DESCRIPTION.stem
    icon = re.findall(r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)', cmake(), re.IGNORECASE | re.MULTILINE)[0]
    screenshots = re.findall(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', cmake(), re.IGNORECASE | re.MULTILINE)[0].split()
    homepage = re.search(r'set\(EXTENSION_HOMEPAGE "([^"]+)"\)', cmake()).group(1)
    assert homepage == metadata()["scm_url"].removesuffix(".git")
    owner_and_repository = urllib.parse.urlsplit(homepage).path.strip("/")
    for url in [icon, *screenshots]:
        assert url.startswith("http")
        prefix = f"https://raw.githubusercontent.com/{owner_and_repository}/{metadata()['scm_revision']}/"
        assert url.startswith(prefix), url  # served from the extension's own repository and branch
        assert (ROOT / url.removeprefix(prefix)).is_file(), url


def test_license_file_in_the_repository_root_is_apache_2():
    found = [ROOT / name for name in LICENSE_FILE_NAMES if (ROOT / name).is_file()]
    assert found, "no license file in the repository root"
    assert "Apache License" in found[0].read_text() and "Version 2.0" in found[0].read_text()


def test_contributors_are_name_and_affiliation():
    contributors = re.search(r'set\(EXTENSION_CONTRIBUTORS "([^"]+)"\)', cmake()).group(1)
    assert all(re.fullmatch(r"[^()]+ \([^()]+\)", name.strip()) for name in contributors.split(","))
    module = (ROOT / "SAMProstateSDG" / "SAMProstateSDG.py").read_text()
    assert f'self.parent.contributors = ["{contributors}"]' in module
