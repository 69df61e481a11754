"""Choosing where the networks run: CUDA, then Apple MPS, then the CPU."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")
BACKEND_CHOICES = ("auto", "torch", "openvino", "onnxruntime")  # the image encoder's runtime (backends.py)
PRECISION_CHOICES = ("auto", "fp32", "bf16")


def pick_device(name: str = "auto") -> torch.device:
    import torch  # imported here so that the command line answers option errors without loading torch

    if name not in DEVICE_CHOICES:
        raise InputError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if name == "auto":
        return torch.device(next(kind for kind in ("cuda", "mps", "cpu") if available[kind]))
    if not available[name]:
        raise InputError(f"device {name} is not available on this machine")
    return torch.device(name)


def device_note(device: torch.device) -> str | None:
    """A line for the user when the networks will run on the CPU although they asked for any device."""
    if device.type != "cpu":
        return None
    return "no CUDA or Apple MPS GPU found: running on the CPU (about 1-2 s per slice for LiteMedSAM)"
