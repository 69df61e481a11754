"""Where the networks run: CUDA, then Apple MPS, then the CPU, on machines made by patching what torch finds."""

import pytest
import torch

from SAMProstateSDGLib.core.devices import device_note, pick_device
from SAMProstateSDGLib.core.errors import InputError


@pytest.fixture
def machine(monkeypatch):
    """``machine(cuda, mps)``: torch reports these GPUs as present."""

    def make(cuda: bool, mps: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)

    return make


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_prefers_cuda_then_mps_then_the_cpu(machine, cuda, mps, expected):
    machine(cuda, mps)
    assert pick_device("auto") == torch.device(expected)
    assert pick_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["cuda", "mps"])
def test_a_gpu_the_machine_lacks_is_refused(machine, name):
    machine(False, False)
    with pytest.raises(InputError, match=f"^device {name} is not available on this machine$"):
        pick_device(name)


def test_an_unknown_device_is_refused_and_only_the_cpu_gets_a_note():
    with pytest.raises(InputError, match="unknown device 'tpu'; choose one of auto, cuda, mps, cpu"):
        pick_device("tpu")
    assert "running on the CPU" in device_note(torch.device("cpu"))
    assert device_note(torch.device("cuda")) is None and device_note(torch.device("mps")) is None
