"""SHA-256 of model files, checked before any weights are loaded."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import InputError


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: str | Path, expected: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        raise InputError(f"checksum mismatch for {path}: expected sha256 {expected[:12]}…, got {actual[:12]}…")
