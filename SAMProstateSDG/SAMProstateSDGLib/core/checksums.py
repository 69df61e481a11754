"""Model files: SHA-256 checked before any weights are loaded, then read as weights only."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import torch

from .errors import InputError

ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


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
        raise InputError(f"{path} is not a readable {description}: {_cause(error)}") from None


def require_resume_state(path: Path) -> None:
    if not path.is_file():
        raise InputError(f"nothing to resume: {path} does not exist (run without --resume to start afresh)")


def load_resume_state(path: Path, keys: tuple[str, ...]) -> dict:
    """A training run's resume state (read as weights only: it holds tensors, numbers, lists and dictionaries)."""
    require_resume_state(path)
    state = load_weights(path, "resume state")
    missing = [key for key in keys if not isinstance(state, dict) or key not in state]
    if missing:
        raise InputError(f"{path} is not a resume state of this training: no {', '.join(missing)}")
    return state


def _cause(error: Exception) -> str:
    """The informative line of a load error (for a pickle that is not weights only: the global it names)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    line = next((line for line in lines if "GLOBAL" in line), lines[0] if lines else type(error).__name__)
    return line if len(line) <= 160 else line[:157] + "..."


def _listed(names: list[str], shown: int = 3) -> str:
    more = f" (+{len(names) - shown} more)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def load_state_strictly(module: torch.nn.Module, state, what: str) -> None:
    """``module.load_state_dict(state, strict=True)``; a mismatch names the first missing, unexpected or misshapen keys."""
    if not isinstance(state, Mapping) or not all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()):
        raise InputError(f"{what}: wrong keys or shapes (not a dictionary of named tensors)")
    expected = module.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    misshapen = [f"{key} {tuple(state[key].shape)} for {tuple(expected[key].shape)}" for key in expected if key in state and state[key].shape != expected[key].shape]
    problems = [f"{label} {_listed(names)}" for label, names in (("missing", missing), ("unexpected", unexpected), ("shape", misshapen)) if names]
    if problems:
        raise InputError(f"{what}: wrong keys or shapes: " + "; ".join(problems))
    module.load_state_dict(state, strict=True)


def half_precision(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating-point tensors in fp16 for shipping; integer buffers unchanged."""
    return {name: tensor.half() if tensor.is_floating_point() else tensor for name, tensor in state.items()}


def int8_per_channel(state: dict[str, torch.Tensor]) -> dict:
    """Weight tensors (two or more dimensions) as int8 with one fp32 scale per output channel (symmetric,
    largest magnitude to 127: the error per weight is at most half a step); the rest as ``half_precision``."""
    stored: dict = half_precision(state)
    for name, tensor in state.items():
        if tensor.is_floating_point() and tensor.dim() >= 2:
            largest = tensor.detach().float().abs().amax(dim=tuple(range(1, tensor.dim())), keepdim=True)
            scale = torch.where(largest > 0, largest / 127, torch.ones_like(largest))
            stored[name] = {"int8": torch.round(tensor.float() / scale).to(torch.int8), "scale": scale}
    return stored


def full_precision(state: Mapping) -> dict:
    """Floating-point tensors in fp32, ``int8_per_channel`` entries dequantised; anything else unchanged
    (a strict load refuses what is not a tensor)."""
    return {name: _in_fp32(value) for name, value in state.items()}


def _in_fp32(value):
    if isinstance(value, Mapping) and set(value) == {"int8", "scale"}:
        return value["int8"].float() * value["scale"].float()
    return value.float() if isinstance(value, torch.Tensor) and value.is_floating_point() else value


def load_trained_weights(module: ModuleT, checkpoint: str | Path, description: str, sha256: str | None = None) -> ModuleT:
    """Load a checkpoint of trained weights (fp16 or fp32) into ``module`` with strict keys; returns it in eval mode."""
    state = load_weights(checkpoint, f"{description} checkpoint", sha256)
    state = full_precision(state) if isinstance(state, Mapping) else state
    load_state_strictly(module, state, f"{checkpoint} does not fit this SAM's {description}")
    return module.eval()
