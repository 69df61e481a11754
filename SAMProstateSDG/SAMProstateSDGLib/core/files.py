"""Output files: checked before any work, never over an input, and written atomically, all or nothing.

A file is first written beside its target as ``.NAME.partial-PID.EXT`` and then moved into place;
several files (label volume, boxes, overlay) are moved together, and if one move fails the ones
already moved are undone. Partial files left by a killed run of ours are removed by the next write.
"""

from __future__ import annotations

import glob
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import InputError

PARTIAL, PREVIOUS = "partial", "previous"
WINDOWS_ACCESS_DENIED = 5  # ERROR_ACCESS_DENIED


def _stem_and_suffix(path: Path) -> tuple[str, str]:
    """``labels.nii.gz`` -> ("labels", ".nii.gz"): the suffix a writer reads the format from."""
    suffixes = path.suffixes[-2:] if path.suffix == ".gz" else path.suffixes[-1:]
    suffix = "".join(suffixes)
    return path.name[: len(path.name) - len(suffix)] or path.name, suffix


def side_path(path: Path, kind: str = PARTIAL, pid: int | None = None) -> Path:
    """The hidden file beside ``path`` where it is written (``partial``) or its previous version kept (``previous``)."""
    stem, suffix = _stem_and_suffix(path)
    return path.with_name(f".{stem}.{kind}-{os.getpid() if pid is None else pid}{suffix}")


def _running(pid: int) -> bool:
    """Whether process ``pid`` runs, asked without signalling it: on Windows ``os.kill(pid, 0)`` is no existence check
    (0 is CTRL_C_EVENT; CPython sends that to the process's console group, else terminates the process)."""
    if sys.platform == "win32":
        import _winapi

        try:
            handle = _winapi.OpenProcess(_winapi.SYNCHRONIZE, False, pid)
        except OSError as error:
            return getattr(error, "winerror", None) == WINDOWS_ACCESS_DENIED  # it runs, as another user; gone: invalid parameter
        try:
            return _winapi.WaitForSingleObject(handle, 0) == _winapi.WAIT_TIMEOUT
        finally:
            _winapi.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(path: Path) -> list[Path]:
    """Remove the partial files of ``path`` left by processes that no longer run; returns them."""
    stem, suffix = _stem_and_suffix(path)
    prefix = f".{stem}.{PARTIAL}-"
    stale = []
    for candidate in path.parent.glob(glob.escape(prefix) + "*" + glob.escape(suffix)):
        pid = candidate.name[len(prefix) : len(candidate.name) - len(suffix)]
        if pid.isdigit() and not _running(int(pid)):
            candidate.unlink(missing_ok=True)
            stale.append(candidate)
    return stale


def write_files_atomically(writers: dict[Path, Callable[[str], object]]) -> None:
    """Call each ``write(temporary_path)``, then move all results into place together: all or nothing."""
    temporaries: dict[Path, Path] = {}
    path = None
    try:
        for path, write in writers.items():
            path = Path(path)
            remove_stale_partials(path)
            temporaries[path] = side_path(path)
            write(str(temporaries[path]))
            os.chmod(temporaries[path], 0o666 & ~_umask())
        _move_into_place(temporaries)
    except (OSError, RuntimeError) as error:  # a full disk, a folder gone read-only, SimpleITK's writer failing
        reason = getattr(error, "strerror", None) or (str(error).strip().splitlines() or [type(error).__name__])[-1]
        raise InputError(f"cannot write {path}: {reason}") from None
    finally:
        for temporary in temporaries.values():
            temporary.unlink(missing_ok=True)


def _move_into_place(temporaries: dict[Path, Path]) -> None:
    """Replace each target by its temporary; if one replacement fails, the earlier ones are undone."""
    previous: dict[Path, Path | None] = {}
    try:
        for path, temporary in temporaries.items():
            kept = None
            if path.exists() or path.is_symlink():
                kept = side_path(path, PREVIOUS)
                os.replace(path, kept)
            previous[path] = kept
            os.replace(temporary, path)
    except BaseException:
        for path, kept in previous.items():
            if kept is None:
                path.unlink(missing_ok=True)
            else:
                os.replace(kept, path)
        raise
    for kept in previous.values():
        if kept is not None:
            kept.unlink(missing_ok=True)


def write_atomically(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call ``write(temporary_path)`` and move the result into place, so no partial file is left."""
    write_files_atomically({Path(path): write})


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def text_writer(text: str) -> Callable[[str], object]:
    """A writer (for ``write_files_atomically``) of ``text`` as UTF-8."""
    return lambda temporary: Path(temporary).write_text(text, encoding="utf-8")


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    write_atomically(path, text_writer(text))


def json_text(data, indent: int = 2) -> str:
    """Strict JSON, what every JSON file we write goes through: a figure that does not exist (NaN: the HD95 of an empty
    mask, a share of no slices) is null, as JSON has no NaN; an infinity is refused."""
    return json.dumps(_nan_as_null(data), indent=indent, allow_nan=False) + "\n"


def _nan_as_null(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _nan_as_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_as_null(item) for item in value]
    return value


def write_json(path: str | os.PathLike, data, indent: int = 2) -> None:
    write_text_atomically(path, json_text(data, indent))


def _same_file(first: Path, second: Path) -> bool:
    """Whether two paths name one file: the same path, a symbolic link to it, or a hard link (same device and inode)."""
    try:
        return os.path.samefile(first, second)
    except OSError:
        return os.path.realpath(first) == os.path.realpath(second)


def check_output_folder(folder: Path) -> None:
    """Refuse a folder that is missing, is a file, or cannot be written in (checked by creating a file there)."""
    if not folder.exists():
        raise InputError(f"output folder {folder} does not exist")
    if not folder.is_dir():
        raise InputError(f"output folder {folder} is not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=".samprostate-write-check-", dir=folder)
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        raise InputError(f"cannot write in {folder}: {error.strerror or error}") from None


def check_outputs(outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike | None], overwrite: bool) -> None:
    """The one check of output paths, before any work: none is an input (whatever ``--overwrite`` says), a folder,
    another output, or an existing file without ``overwrite``; each folder exists and can be written in."""
    sources = [Path(path) for path in inputs if path is not None]
    checked: list[Path] = []
    for path in map(Path, outputs):
        source = next((source for source in sources if _same_file(path, source)), None)
        if source is not None:
            raise InputError(f"output {path} is the input {source}; choose another output path")
        if any(_same_file(path, other) for other in checked):
            raise InputError(f"{path} is given for two outputs")
        if path.is_dir():
            raise InputError(f"output {path} is a folder; give a file name")
        if (path.exists() or path.is_symlink()) and not overwrite:
            raise InputError(f"output {path} exists; use --overwrite to replace it")
        check_output_folder(path.parent)
        checked.append(path)
