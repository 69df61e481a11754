"""Training in a background process, as the Slicer Training tab drives it: real runs on real data (two RUNMC cases cut to
four slices, conftest: small_runmc), on the CPU."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import torch

from SAMProstateSDGLib.apps.training_process import (
    STOP_GRACE_S,
    TrainingProcess,
    TrainingProgress,
    TrainingRequest,
    own_process_group,
    parse_progress,
    register_trained_model,
    trained_models,
)
from SAMProstateSDGLib.core.checksums import load_weights, sha256_of

# stdout of `python -m SAMProstateSDGLib.apps.cli train-coarse ... --epochs 1 --max-cases 2`, as TrainingProcess read it
CAPTURED_OUTPUT = [
    "1 training and 1 validation cases from RUNMC",
    "epoch 1/1 loss 1.5557 val_dice 0.0000",
    "best validation Dice 0.0000; wrote /tmp/tp/run2/coarse.pt",
]
RUN_LIMIT_S = 120
ENDLESS_EPOCHS = 1000  # a tiny run that no machine finishes before the stop (20 were done before it on a fast, quiet CPU)


def tiny_request(data: Path, output: Path, epochs: int, resume: bool = False) -> TrainingRequest:
    return TrainingRequest("coarse", data, "RUNMC", output, epochs, device="cpu", resume=resume, max_cases=2, batch_size=8)


def run_until(process: TrainingProcess, done) -> list[str]:
    """Poll as the Slicer timer does until ``done(update)``; returns every line seen."""
    lines, deadline = [], time.monotonic() + RUN_LIMIT_S
    while time.monotonic() < deadline:
        update = process.poll()
        lines += update.lines
        if done(update):
            return lines
        time.sleep(0.1)
    process.stop()
    raise AssertionError(f"training did not get there within {RUN_LIMIT_S} s; output: {lines}")


def finish(process: TrainingProcess) -> list[str]:
    return run_until(process, lambda update: update.finished)


def test_parser_reads_the_epoch_line_of_captured_output():
    parsed = [parse_progress(line) for line in CAPTURED_OUTPUT]
    assert parsed == [None, TrainingProgress(1, 1, 1.5557, 0.0), None]


def test_a_tiny_run_reports_progress_and_writes_a_checked_model(small_runmc, tmp_path):
    process = TrainingProcess(tiny_request(small_runmc, tmp_path / "coarse", epochs=1))
    process.start()
    assert process.poll().finished is False  # start returns at once

    lines = finish(process)

    assert process.returncode == 0, lines
    assert process.error_message is None
    progress = process.progress
    assert (progress.epoch, progress.epochs) == (1, 1)
    manifest = process.manifest()
    assert progress.loss == pytest.approx(manifest["history"][-1]["loss"], abs=5e-5)  # the log line and the manifest agree
    assert process.model_path == tmp_path / "coarse" / "coarse.pt"
    assert manifest["sha256"] == sha256_of(process.model_path)
    assert manifest["history"][-1]["validation_dice"] == progress.validation_dice
    assert not any("\r" in line or "it/s" in line for line in lines), "tqdm bars leaked into the log"

    registry = tmp_path / "trained_models.json"
    entry = register_trained_model(registry, "coarse", process.request.manifest_path)
    register_trained_model(registry, "coarse", process.request.manifest_path)  # registering again replaces it
    assert trained_models(registry) == {entry.id: entry}
    assert (entry.kind, entry.path, entry.sha256) == ("coarse", process.model_path, manifest["sha256"])


def test_stop_ends_a_running_job_and_a_resumed_run_continues_from_the_saved_epoch(small_runmc, tmp_path):
    output = tmp_path / "coarse"
    process = TrainingProcess(tiny_request(small_runmc, output, epochs=ENDLESS_EPOCHS))  # the stop must end it
    process.start()
    run_until(process, lambda update: update.progress is not None)
    stopped_at = time.monotonic()
    process.stop()
    run_until(process, lambda update: update.finished)

    assert time.monotonic() - stopped_at < STOP_GRACE_S + 5  # on SIGINT, or killed when the grace period ends
    assert process.returncode != 0
    assert process.error_message == "samprostate: interrupted"
    saved_epoch = torch.load(process.request.resume_state_path, weights_only=True)["epoch"]
    assert 1 <= saved_epoch < ENDLESS_EPOCHS  # how many epochs a tiny run completes before it stops depends on the machine

    shorter = TrainingProcess(tiny_request(small_runmc, output, epochs=saved_epoch + 1, resume=True))
    shorter.start()  # another --epochs would replan the learning-rate schedule: refused in one line
    finish(shorter)
    assert shorter.returncode != 0 and f"other options (epochs {ENDLESS_EPOCHS} -> " in shorter.error_message

    resumed = TrainingProcess(tiny_request(small_runmc, output, epochs=ENDLESS_EPOCHS, resume=True))
    resumed.start()
    lines = run_until(resumed, lambda update: update.progress is not None)
    resumed.stop()
    lines += finish(resumed)

    assert any(line.startswith(f"resuming after epoch {saved_epoch} ") for line in lines), lines
    epochs = [progress.epoch for progress in map(parse_progress, lines) if progress]
    assert epochs[0] == saved_epoch + 1
    assert f"epoch 1/{ENDLESS_EPOCHS} " in (output / "training.log").read_text(encoding="utf-8")  # the stopped run's lines are kept before the resumed run's
    state = torch.load(resumed.request.resume_state_path, weights_only=True)
    assert [item["epoch"] for item in state["history"]] == list(range(1, state["epoch"] + 1))


# Slicer's PythonSlicer is a CTKAppLauncher: it starts the real interpreter as its child (ctkAppLauncher.cpp,
# startApplication -> runProcess, a QProcess) and forwards no signals; MONAIAuto3DSeg's process.py notes that
# killing it "would only stop the launcher". This stand-in does the same and writes the real child's pid.
LAUNCHER = """#!{python}
import os, subprocess, sys
child = subprocess.Popen([{python!r}, *sys.argv[1:]])
open(os.environ["LAUNCHED_PID_FILE"], "w").write(str(child.pid))
sys.exit(child.wait())
"""


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.skipif(os.name != "posix", reason="the launcher stand-in is a POSIX script")
def test_stop_ends_the_whole_launcher_tree_at_once_and_keeps_the_resume_state(small_runmc, tmp_path, monkeypatch):
    launcher = tmp_path / "PythonSlicer"
    launcher.write_text(LAUNCHER.format(python=sys.executable))
    launcher.chmod(0o755)
    monkeypatch.setenv("LAUNCHED_PID_FILE", str(tmp_path / "launched.pid"))
    process = TrainingProcess(tiny_request(small_runmc, tmp_path / "coarse", epochs=ENDLESS_EPOCHS), python=str(launcher))
    process.start()
    run_until(process, lambda update: update.progress is not None)
    interpreter = int((tmp_path / "launched.pid").read_text())
    assert os.getpgid(interpreter) == process._process.pid != os.getpgid(0)  # the tree has a group of its own

    asked = time.monotonic()
    process.stop()
    assert time.monotonic() - asked < 0.5  # the GUI thread does not wait for the run
    run_until(process, lambda update: update.finished)

    assert time.monotonic() - asked < 15
    assert not alive(interpreter) and not alive(process._process.pid)
    assert process.error_message == "samprostate: interrupted"
    assert load_weights(process.request.resume_state_path, "resume state")["epoch"] >= 1  # weights only, as training reads it


def test_the_child_gets_its_own_process_group_without_a_console_window():
    assert own_process_group("posix") == {"start_new_session": True}
    windows = own_process_group("nt")["creationflags"]
    assert windows & 0x200 and windows & 0x8000000  # CREATE_NEW_PROCESS_GROUP | CREATE_NO_WINDOW


def test_a_bad_data_folder_fails_with_one_line_message(tmp_path):
    process = TrainingProcess(tiny_request(tmp_path / "missing", tmp_path / "coarse", epochs=1))
    process.start()
    finish(process)

    assert process.returncode == 2
    assert process.error_message == f"samprostate: error: data folder not found: {tmp_path / 'missing'}"
    assert not (tmp_path / "coarse").exists()  # the refused run leaves no folder behind
