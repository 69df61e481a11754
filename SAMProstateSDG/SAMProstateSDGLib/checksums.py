"""Model files: SHA-256 checked before any weights are loaded, then read as weights only."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

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


def load_weights(path: str | Path, description: str, sha256: str | None = None):
    """``torch.load(weights_only=True)`` of a file that exists and, if given, has this checksum."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{description} not found: {path}")
    if sha256 is not None:
        verify_sha256(path, sha256)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a file that is not a checkpoint
        raise InputError(f"{path} is not a readable {description} ({type(error).__name__})") from None


def half_precision(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating-point tensors in fp16 for shipping; integer buffers unchanged."""
    return {name: tensor.half() if tensor.is_floating_point() else tensor for name, tensor in state.items()}


def full_precision(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.float() if tensor.is_floating_point() else tensor for name, tensor in state.items()}


def load_trained_weights(module: "torch.nn.Module", checkpoint: str | Path, description: str, sha256: str | None = None) -> "torch.nn.Module":
    """Load a checkpoint of trained weights (fp16 or fp32) into ``module`` with strict keys; returns it in eval mode."""
    state = load_weights(checkpoint, f"{description} checkpoint", sha256)
    try:
        module.load_state_dict(full_precision(state), strict=True)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise InputError(f"{checkpoint} does not fit this SAM's {description} ({type(error).__name__})") from None
    return module.eval()
