"""Training in a background process that a GUI polls without blocking; imports neither slicer nor Qt.

The child runs ``PYTHON -m SAMProstateSDGLib.apps.cli train-coarse`` or ``... train --method METHOD``
(PYTHON: this interpreter unless told otherwise; inside Slicer, the PythonSlicer launcher, which
starts the real interpreter as its own child and forwards no signals). The child therefore gets a
process group of its own (a new session on POSIX; a new process group without a console window on
Windows), and Stop signals the whole group (POSIX) or ends the whole tree (Windows), never waiting
for it: ``poll`` reports the end, and escalates to a kill when the run has not ended within a grace
period. Its stdout and stderr go to OUTPUT/training.log, which ``poll`` reads on the caller's
thread (no reader thread: inside Slicer the main thread holds the GIL while Qt idles); the
line the training loops log after each epoch (``epoch 3/24 loss 0.4123 val_dice 0.8512``, see
``coarse_training.epoch_summary``) becomes ``TrainingProgress``. tqdm's bars are switched off in
the child (``TQDM_DISABLE``), so the log holds only complete lines.

Trained models are registered in a JSON list (``register_trained_model``) so the Slicer module
can offer them next to the shipped ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from ..core.catalog import CatalogEntry, default_entry, entry_from_json, entry_to_json
from ..core.errors import INTERRUPTED, InputError
from ..core.files import write_json
from ..methods.registry import Method, trainable_methods
from ..training.defaults import COARSE_TRAINING, RESUME_STATE

PACKAGE_PARENT = Path(__file__).resolve().parents[2]

STOP_GRACE_S = 10.0  # after Stop, how long the run may take to exit on its own before it is killed
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+) loss (\S+) val_dice (\S+)$")


@dataclass(frozen=True)
class TrainingMethod:
    """How to run one training method and what it writes: OUTPUT/STEM.pt and OUTPUT/STEM.json."""

    command: tuple[str, ...]
    output_stem: str
    model_kind: str  # as in the model catalog
    title: str
    scene_name: str  # the stable name Slicer scenes store
    default_epochs: int


def _training_method(key: str, item: Method) -> TrainingMethod:
    assert item.training is not None and item.model_kind is not None  # a trainable method trains a model of its kind
    return TrainingMethod(("train", "--method", key), key, item.model_kind, item.short_title, item.scene_name, item.training.epochs)


COARSE = "coarse"  # what train-coarse trains: the coarse network (not a method)
TRAINING_METHODS = {
    COARSE: TrainingMethod(("train-coarse",), "coarse", "coarse", "Coarse network (ResNet U-Net)", "coarse", COARSE_TRAINING.epochs),
    **{
        key: _training_method(key, item) for key, item in trainable_methods().items()
    },
}


@dataclass(frozen=True)
class TrainingProgress:
    """One completed epoch, as the training loop logged it."""

    epoch: int
    epochs: int
    loss: float
    validation_dice: float


def parse_progress(line: str) -> TrainingProgress | None:
    """The progress in an ``epoch k/n loss L val_dice D`` line; None for any other line."""
    match = EPOCH_LINE.match(line.strip())
    if match is None:
        return None
    return TrainingProgress(int(match[1]), int(match[2]), float(match[3]), float(match[4]))


@dataclass(frozen=True)
class TrainingRequest:
    """What to train; ``cache`` (all but coarse) defaults to OUTPUT/../embeddings."""

    method: str
    data: Path
    site: str
    output: Path
    epochs: int
    device: str = "auto"
    resume: bool = False
    max_cases: int | None = None
    batch_size: int | None = None
    cache: Path | None = None
    overwrite: bool = False  # replace a run trained before in ``output`` (the child refuses otherwise)

    def __post_init__(self) -> None:
        if self.method not in TRAINING_METHODS:
            raise ValueError(f"unknown training method {self.method!r}; choose one of {', '.join(TRAINING_METHODS)}")

    def command_line(self, python: str = sys.executable) -> list[str]:
        """The child's command line: ``python`` running the ``samprostate`` CLI."""
        arguments = [*TRAINING_METHODS[self.method].command, "--data", self.data, "--site", self.site, "--output", self.output,
                     "--epochs", self.epochs, "--device", self.device]
        if self.resume:
            arguments.append("--resume")
        if self.overwrite:
            arguments.append("--overwrite")
        if self.max_cases is not None:
            arguments += ["--max-cases", self.max_cases]
        if self.batch_size is not None:
            arguments += ["--batch-size", self.batch_size]
        if self.method != COARSE:
            arguments += ["--cache", self.cache or Path(self.output).parent / "embeddings"]
        return [python, "-m", "SAMProstateSDGLib.apps.cli", *map(str, arguments)]

    def previous_run(self) -> list[str]:
        """The files of a run trained before in ``output`` (its model, manifest, resume state)."""
        stem = TRAINING_METHODS[self.method].output_stem
        return [name for name in (f"{stem}.pt", f"{stem}.json", RESUME_STATE) if (Path(self.output) / name).exists()]

    @property
    def manifest_path(self) -> Path:
        return Path(self.output) / f"{TRAINING_METHODS[self.method].output_stem}.json"

    @property
    def resume_state_path(self) -> Path:
        return Path(self.output) / RESUME_STATE


@dataclass
class TrainingUpdate:
    """What ``poll`` found: new output lines, the latest epoch so far, and whether the child has ended."""

    lines: list[str] = field(default_factory=list)
    progress: TrainingProgress | None = None
    finished: bool = False


class TrainingProcess:
    """One training run in a child process: ``start``, then ``poll`` (non-blocking) until finished, or ``stop``."""

    def __init__(self, request: TrainingRequest, python: str = sys.executable):
        self.request = request
        self.python = python
        self.progress: TrainingProgress | None = None
        self.last_line = ""
        self._stopped = False
        self._kill_at: float | None = None  # when a stopped run that has not exited is killed
        self._process: subprocess.Popen | None = None
        self._log: TextIO | None = None  # our own read handle on the child's log
        self._partial = ""  # a last line the child has not finished writing
        self._unread: list[str] = []  # lines read from the log, not yet returned by poll
        self._new_folder: Path | None = None  # the output folder this start created, removed again if the run is refused

    def start(self) -> None:
        if self._process is not None:
            raise RuntimeError("this training process was already started")
        environment = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_DISABLE="1")
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_PARENT), environment.get("PYTHONPATH")]))
        log_path = Path(self.request.output) / "training.log"
        if not log_path.parent.exists():
            self._new_folder = log_path.parent
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a", encoding="utf-8") as child_log:  # a resumed run's log goes on after the stopped one's
            started_at = child_log.tell()
            self._process = subprocess.Popen(
                self.request.command_line(self.python),
                stdout=child_log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=environment,
                **own_process_group(),
            )
        self._log = open(log_path, encoding="utf-8", errors="replace", newline="")
        self._log.seek(started_at)  # this run's lines only

    def _read_log(self) -> None:
        """Move the complete lines the child has written since the last read to ``_unread``."""
        if self._log is None:
            return
        assert self._process is not None  # the log is opened once the child has started
        exited = self._process.poll() is not None and not self._group_alive()
        text = self._partial + self._log.read()
        lines = text.splitlines(keepends=True)
        self._partial = lines.pop() if lines and not lines[-1].endswith(("\n", "\r")) and not exited else ""
        for line in lines:
            if line.strip():
                self.last_line = line.rstrip()
                self._unread.append(self.last_line)
        if exited:
            self._log.close()
            self._log = None
            self._forget_a_refused_run()

    def _forget_a_refused_run(self) -> None:
        """A run refused before it trained (exit status 2: its one-line error is in ``last_line``) leaves no folder it created."""
        folder = self._new_folder
        assert self._process is not None  # called once the child has exited
        with contextlib.suppress(OSError):  # a folder removed meanwhile, or a log another program holds open (Windows)
            if self._process.returncode == 2 and folder is not None and [path.name for path in folder.iterdir()] == ["training.log"]:
                (folder / "training.log").unlink()
                folder.rmdir()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def finished(self) -> bool:
        """The child and everything it started have exited, and all output has been read (not necessarily polled yet)."""
        if self._process is None or self._process.poll() is None or self._group_alive():
            return False
        self._read_log()
        return True

    def _group_alive(self) -> bool:
        """Whether a process of the child's group is still running (POSIX; on Windows the launcher waits for its child)."""
        if os.name != "posix":
            return False
        assert self._process is not None  # asked only of a started child
        try:
            os.killpg(self._process.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    @property
    def returncode(self) -> int | None:
        return self._process.returncode if self.finished and self._process is not None else None  # finished: started

    def poll(self) -> TrainingUpdate:
        """The lines written since the last poll and the latest progress; never blocks.

        A run told to stop that is still alive after the grace period is killed here.
        """
        if self._kill_at is not None and time.monotonic() >= self._kill_at:
            self._kill_at = None
            self.kill()  # whatever of the tree is left; nothing happens when all of it has exited
        update = TrainingUpdate(finished=self.finished)
        self._read_log()
        update.lines, self._unread = self._unread, []
        for line in update.lines:
            self.progress = parse_progress(line) or self.progress
        update.progress = self.progress
        return update

    @property
    def error_message(self) -> str | None:
        """The child's last output line when it failed (``samprostate: error: …``); None otherwise."""
        if self.returncode in (None, 0):
            return None
        if self._stopped:
            return INTERRUPTED
        return self.last_line or f"training ended with exit status {self.returncode}"

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """Ask the run to stop and return at once; ``poll`` kills it if it is still running ``grace`` seconds later.

        On POSIX the child's whole process group gets SIGINT (the CLI then exits with status 130);
        on Windows the tree is ended at once. Either way the resume state of the last completed
        epoch stays: it is saved atomically after each epoch.
        """
        if not self.running:
            return
        self._stopped = True
        if os.name == "posix":
            self._signal_group(signal.SIGINT)
            self._kill_at = time.monotonic() + grace
        else:
            self.kill()

    def kill(self) -> None:
        """End the child and everything it started now, without waiting."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._stopped = True
        if os.name == "posix":
            self._signal_group(signal.SIGKILL)
        elif self._process.poll() is None:  # the launcher and the interpreter it started: taskkill /T ends the tree
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self._process.pid)], capture_output=True, creationflags=NO_WINDOW)

    def _signal_group(self, number: int) -> None:
        assert self._process is not None  # signalled only once started
        try:
            os.killpg(self._process.pid, number)  # the child leads its own session, so its group id is its pid
        except (ProcessLookupError, PermissionError):  # the whole group has exited (and been reaped)
            pass

    def manifest(self) -> dict:
        """The manifest the finished run wrote (model file, checksum, history, best validation Dice)."""
        if self.returncode != 0:
            raise RuntimeError(self.error_message or "training has not finished")
        return json.loads(self.request.manifest_path.read_text(encoding="utf-8"))

    @property
    def model_path(self) -> Path:
        return Path(self.request.output) / self.manifest()["file"]


NO_WINDOW = getattr(subprocess, "CREATE_NO_WINDOW", 0)


def own_process_group(os_name: str = os.name) -> dict:
    """``subprocess.Popen`` options that start the child in a process group of its own, without a console window."""
    if os_name == "posix":
        return {"start_new_session": True}
    return {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0x200) | getattr(subprocess, "CREATE_NO_WINDOW", 0x8000000)}


def trained_models(registry: Path) -> dict[str, CatalogEntry]:
    """The models registered in ``registry`` (a JSON list), by id; empty when it does not exist."""
    if not registry.is_file():
        return {}
    return {entry["id"]: entry_from_json(entry) for entry in json.loads(registry.read_text(encoding="utf-8"))}


def manifest_beside(model_file: Path) -> Path:
    """The manifest ``samprostate train`` writes beside the model file it trained (``METHOD.pt`` -> ``METHOD.json``)."""
    return model_file.with_suffix(".json")


def _trained_model_entry(method: str, manifest: dict, folder: Path) -> CatalogEntry:
    """The model a finished run of ``method`` wrote into ``folder``, as its (read) manifest describes it; its id is the model
    file's absolute path."""
    path = (folder / manifest["file"]).resolve()
    kind = TRAINING_METHODS[method].model_kind
    title = f"{method} trained on {manifest['site']} (validation Dice {manifest['best_validation_dice']:.4f}), {path.parent}"
    # training always builds the shipped architecture of its kind (the coarse U-Net, or a LiteMedSAM-based method)
    model_type = default_entry("coarse").model_type if method == COARSE else default_entry("sam").model_type
    return CatalogEntry(str(path), kind, model_type, title, path, manifest["sha256"])


def trained_model_file(path: Path | None, method: str | None, option_name: str = "--method-model") -> CatalogEntry | None:
    """``--method-model PATH`` for ``--method method`` (or another option naming such a file): a model file ``samprostate
    train`` wrote, with its manifest beside it (None: the method's shipped model)."""
    if path is None:
        return None
    option = f"{option_name} {path}"
    if not path.is_file():
        raise InputError(f"{option} not found" if not path.exists() else f"{option} is not a file")
    manifest_path = manifest_beside(path)
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        trained_for, file = manifest["method"], manifest["file"]
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"{option}: {manifest_path.name} beside it is missing or is not the manifest samprostate train writes "
                         "with the model (a coarse network goes to --coarse-checkpoint)") from None
    if file != path.name or trained_for not in TRAINING_METHODS or trained_for == COARSE:
        raise InputError(f"{option}: its manifest {manifest_path.name} describes {file}, a {trained_for} model")
    if trained_for != method:
        raise InputError(f"{option} is a {trained_for} model: run it with --method {trained_for}")
    from ..core.checksums import verify_sha256  # imports torch, which the Slicer module may not have installed yet

    entry = _trained_model_entry(trained_for, manifest, path.parent)
    verify_sha256(path, entry.sha256)  # before any model loads
    return entry


def register_trained_model(registry: Path, method: str, manifest_path: Path) -> CatalogEntry:
    """Add (or replace) the model a finished run wrote."""
    entry = _trained_model_entry(method, json.loads(manifest_path.read_text(encoding="utf-8")), manifest_path.parent)
    models = trained_models(registry)
    models[entry.id] = entry
    registry.parent.mkdir(parents=True, exist_ok=True)
    write_json(registry, [entry_to_json(item) for item in models.values()])
    return entry
