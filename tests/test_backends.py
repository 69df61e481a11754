"""Encoder backends: exported graphs of the real LiteMedSAM encoder, their disk cache, and the measured choice."""

import json
import time

import pytest
import torch

from conftest import FIXTURES, dice, read_mask, samprostate
from SAMProstateSDGLib.core.errors import InputError
from SAMProstateSDGLib.io.volume_io import normalised_array, read_volume
from SAMProstateSDGLib.modeling import backends
from SAMProstateSDGLib.modeling.backends import (
    BackendError,
    Candidate,
    EncoderBackend,
    ExportCache,
    TorchEncoder,
    build_backend,
    candidates,
    choose_encoder,
)

EXPORTED = [
    pytest.param(name, marks=pytest.mark.skipif(
        backends.BACKENDS[name].missing() is not None, reason=f"{name} is not installed (pip install -e '.[fast]')"))
    for name in ("openvino", "onnxruntime")
]


@pytest.fixture(scope="module")
def images(sam_engine):
    """Two real slices of P158-020, preprocessed for the encoder."""
    slices = normalised_array(read_volume(FIXTURES / "P158-020.nii.gz"))[1:3]
    return next(sam_engine.encoder_inputs(slices))


@pytest.fixture(scope="module")
def export_cache():
    """The test session's export cache (conftest: SAMPROSTATE_CACHE_DIR), shared with the command-line tests."""
    return ExportCache()


@pytest.mark.parametrize("name", EXPORTED)
def test_an_exported_encoder_matches_torch_and_is_reused_from_the_cache(name, sam_engine, images, export_cache, monkeypatch):
    encoder = sam_engine.sam.image_encoder
    exported = build_backend(Candidate(name, "fp32"), encoder, export_cache)
    reference = TorchEncoder(encoder).encode(images)
    assert (exported.encode(images) - reference).abs().max() < 1e-3
    manifest = json.loads((exported.folder / "manifest.json").read_text())
    assert manifest["key"]["weights_sha256"] == backends.weights_sha256(encoder) and manifest["key"]["backend_version"]
    monkeypatch.setattr(backends, "export_onnx", lambda *arguments: pytest.fail("a valid cache was exported again"))
    again = build_backend(Candidate(name, "fp32"), encoder, export_cache)
    assert torch.equal(again.encode(images[:1]), exported.encode(images[:1]))


def test_a_corrupt_export_is_rebuilt_not_trusted(sam_engine, images, export_cache, monkeypatch):
    name = next((name for name in ("onnxruntime", "openvino") if backends.BACKENDS[name].missing() is None), None)
    if name is None:
        pytest.skip("neither OpenVINO nor ONNX Runtime is installed (pip install -e '.[fast]')")
    encoder = sam_engine.sam.image_encoder
    folder = build_backend(Candidate(name, "fp32"), encoder, export_cache).folder
    (graph,) = [path for path in folder.iterdir() if path.name != "manifest.json"]
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    exports = []
    original = backends.export_onnx
    monkeypatch.setattr(backends, "export_onnx", lambda *arguments: exports.append(1) or original(*arguments))
    rebuilt = build_backend(Candidate(name, "fp32"), encoder, export_cache)
    assert exports == [1] and export_cache.is_valid(folder, json.loads((folder / "manifest.json").read_text())["key"])
    assert (rebuilt.encode(images[:1]) - TorchEncoder(encoder).encode(images[:1])).abs().max() < 1e-3


def test_the_cache_rebuilds_a_stale_key_a_missing_manifest_and_a_stray_file(tmp_path):
    cache = ExportCache(tmp_path)
    builds = []

    def build(folder):
        builds.append(folder)
        (folder / "graph.bin").write_bytes(b"graph")

    key = {"backend": "test", "precision": "fp32", "backend_version": "1"}
    folder = cache.load_or_build(key, build)
    assert cache.load_or_build(key, build) == folder and len(builds) == 1
    (folder / "stray.bin").write_bytes(b"x")
    cache.load_or_build(key, build)
    assert len(builds) == 2 and not (folder / "stray.bin").exists()
    (folder / "manifest.json").unlink()
    cache.load_or_build(key, build)
    assert len(builds) == 3
    stale = json.loads((folder / "manifest.json").read_text())
    stale["key"]["backend_version"] = "0"
    (folder / "manifest.json").write_text(json.dumps(stale))
    cache.load_or_build(key, build)
    assert len(builds) == 4 and not list(tmp_path.glob("encoders/.building-*"))


class SlowEncoder(EncoderBackend):
    """A real backend that gives torch's embeddings, late: "auto" must not choose it."""

    name = "slow-test"
    precisions = parity_checked = ("fp32",)
    exported = False
    encodes = 0

    def __init__(self, encoder, precision, cache):
        super().__init__(encoder, precision, cache)
        self.torch = TorchEncoder(encoder)

    def encode(self, images):
        SlowEncoder.encodes += 1
        time.sleep(0.2)
        return self.torch.encode(images)


class RecordedEncoder(EncoderBackend):
    """A real backend that answers at once with embeddings recorded from torch: "auto" must choose it."""

    name = "recorded-test"
    precisions = parity_checked = ("fp32",)
    exported = False

    def __init__(self, encoder, precision, cache):
        super().__init__(encoder, precision, cache)
        self.recorded = TorchEncoder(encoder).encode(backends.selection_images(encoder.img_size, 1))

    def encode(self, images):
        return self.recorded.expand(len(images), -1, -1, -1)


class PatchEncoder(torch.nn.Module):
    """A small real encoder with LiteMedSAM's input and output shapes, so that choosing among backends is quick to test."""

    img_size = 256

    def __init__(self):
        super().__init__()
        self.patches = torch.nn.Conv2d(3, 256, kernel_size=4, stride=4)

    def forward(self, images):
        return self.patches(images)


def test_auto_never_chooses_a_backend_slower_than_torch_fp32_and_remembers_its_choice(tmp_path, monkeypatch):
    monkeypatch.setattr(backends, "BACKENDS", {"torch": TorchEncoder})
    backends.register(SlowEncoder)
    encoder, cpu, cache = PatchEncoder().eval(), torch.device("cpu"), ExportCache(tmp_path)
    assert candidates("auto", "fp32", cpu) == [Candidate("torch", "fp32"), Candidate("slow-test", "fp32")]
    chosen = choose_encoder(encoder, cpu, "auto", "fp32", cache, slices=1)
    assert chosen.label == "torch fp32" and SlowEncoder.encodes > 0
    (record,) = (tmp_path / "choices").glob("*.json")
    timings = json.loads(record.read_text())["ms_per_slice"]
    assert timings["slow-test fp32"] > timings["torch fp32"]
    encodes = SlowEncoder.encodes
    assert choose_encoder(encoder, cpu, "auto", "fp32", cache, slices=1).label == "torch fp32"
    assert SlowEncoder.encodes == encodes  # the recorded choice is reused: nothing timed again
    backends.register(RecordedEncoder)  # a new candidate set is measured afresh
    assert choose_encoder(encoder, cpu, "auto", "fp32", cache, slices=1).label == "recorded-test fp32"


def test_requests_that_cannot_run_are_refused_clearly():
    cuda = torch.device("cuda")
    assert candidates("auto", "auto", cuda) == [Candidate("torch", "fp32")]
    with pytest.raises(BackendError, match="runs on the CPU"):
        candidates("openvino", "auto", cuda)
    if backends.BACKENDS["onnxruntime"].missing() is None:
        with pytest.raises(InputError, match="has no bf16"):
            candidates("onnxruntime", "bf16")
    with pytest.raises(InputError, match="unknown backend"):
        candidates("tensorrt")
    for name in ("openvino", "onnxruntime"):
        if backends.BACKENDS[name].missing() is not None:
            with pytest.raises(BackendError, match=r"pip install 'samprostate-sdg\[fast\]'"):
                candidates(name)
    assert candidates("torch", "bf16") == [Candidate("torch", "bf16")]


@pytest.mark.skipif(backends.BACKENDS["openvino"].missing() is not None, reason="OpenVINO is not installed (pip install -e '.[fast]')")
def test_the_command_line_segments_with_the_backend_asked_for(tmp_path):
    image = FIXTURES / "P158-020.nii.gz"
    outputs = {backend: tmp_path / f"{backend}.nii.gz" for backend in ("torch", "openvino")}
    for backend, output in outputs.items():
        samprostate("segment", image, "-o", output, "--backend", backend, "--precision", "fp32")
    torch_labels, openvino_labels = (read_mask(outputs[backend]) for backend in ("torch", "openvino"))
    assert torch_labels.any() and dice(torch_labels, openvino_labels) > 0.99
    refused = samprostate("segment", image, "-o", tmp_path / "x.nii.gz", "--backend", "onnxruntime", "--precision", "bf16", check=False)
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0 and "samprostate: error:" in refused.stderr
    assert not (tmp_path / "x.nii.gz").exists()
