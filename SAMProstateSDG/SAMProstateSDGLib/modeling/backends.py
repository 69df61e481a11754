"""Where SAM's image encoder runs: torch, or a graph exported once to OpenVINO or ONNX Runtime.

Every backend turns preprocessed images [N, 3, S, S] into float32 embeddings [N, 256, 64, 64].
An exported graph is built at first use from the loaded encoder and kept in the export cache
(``cache_root``), keyed by the encoder weights' sha256, the runtime's version, the precision and
``EXPORT_VERSION``; every file's sha256 is stored beside it and checked before each use, and a
cache that fails the check is rebuilt. ``choose_encoder`` with "auto" times the candidates on
this machine once, on a few synthetic slices, and remembers the fastest.

Only backend × precision pairs whose Dice on the 12 non-training cases stays within 0.005 of
torch fp32 (no case moving by more than 0.01; ``samprostate bench --parity``) are candidates for
"auto": each class lists them in ``parity_checked``. CUDA and MPS run torch only.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, cast

import numpy as np
import torch
from torch import nn

from ..core.devices import BACKEND_CHOICES, PRECISION_CHOICES
from ..core.errors import InputError

EXPORT_VERSION = 1  # raise when the exported graph changes: older cache entries are then rebuilt
ONNX_OPSET = 17
SELECTION_ROUNDS = 3  # timed encodes per candidate (after one warm-up), interleaved across candidates
CACHE_ENVIRONMENT = "SAMPROSTATE_CACHE_DIR"
EMBEDDING_TOLERANCE = {"fp32": 1e-3, "bf16": 0.25}  # max |exported - torch fp32| accepted when a graph is built


class BackendError(InputError):
    """A backend cannot run here (not installed, wrong device) or its export failed its check."""


def cache_root() -> Path:
    """``$SAMPROSTATE_CACHE_DIR``, else the user's cache folder (XDG on Linux, Library/Caches, LOCALAPPDATA)."""
    if os.environ.get(CACHE_ENVIRONMENT):
        return Path(os.environ[CACHE_ENVIRONMENT])
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / "samprostate"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "samprostate"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "samprostate"


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bfloat16 arithmetic in hardware (elsewhere bf16 is emulated, and slower)."""
    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def weights_sha256(module: nn.Module) -> str:
    """The sha256 of a module's parameters and buffers (names, shapes and float32 values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ExportCache:
    """Exported graphs in folders named by their key, each with a manifest of its files' sha256."""

    MANIFEST = "manifest.json"

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else cache_root()

    def folder(self, key: dict) -> Path:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        return self.root / "encoders" / f"{key['backend']}-{key['precision']}-{digest}"

    def is_valid(self, folder: Path, key: dict) -> bool:
        """The folder holds exactly the manifest's files, each with its recorded sha256, for this key."""
        try:
            manifest = json.loads((folder / self.MANIFEST).read_text(encoding="utf-8"))
            files = manifest["files"]
            present = {path.name for path in folder.iterdir()} - {self.MANIFEST}
            return manifest["key"] == key and present == set(files) and all(file_sha256(folder / name) == files[name] for name in files)
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def load_or_build(self, key: dict, build: Callable[[Path], None]) -> Path:
        """The folder for ``key``: reused when it passes ``is_valid``, else (re)built by ``build(folder)``."""
        folder = self.folder(key)
        if self.is_valid(folder, key):
            return folder
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".building-", dir=folder.parent))
        try:
            build(staging)
            files = {path.name: file_sha256(path) for path in staging.iterdir()}
            (staging / self.MANIFEST).write_text(json.dumps({"key": key, "files": files}, indent=1, sort_keys=True), encoding="utf-8")
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(staging, folder)
        except OSError:
            if not self.is_valid(folder, key):  # another process may have built it meanwhile
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder


class EncoderBackend(ABC):
    """One way of running the image encoder at one precision."""

    name: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]]
    parity_checked: ClassVar[tuple[str, ...]] = ()  # precisions "auto" may choose (Dice parity measured)
    exported: ClassVar[bool] = True  # runs an exported graph on the CPU (not torch)

    def __init__(self, encoder: nn.Module, precision: str, cache: ExportCache | None):
        self.precision = precision

    @classmethod
    def missing(cls) -> str | None:
        """Why this backend cannot run here, or None when it can."""
        return None

    @classmethod
    def version(cls) -> str:
        return ""

    @abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Float32 embeddings of preprocessed images [N, 3, S, S]."""

    @property
    def label(self) -> str:
        return f"{self.name} {self.precision}"


BACKENDS: dict[str, type[EncoderBackend]] = {}


def register(backend: type[EncoderBackend]) -> type[EncoderBackend]:
    BACKENDS[backend.name] = backend
    return backend


@register
class TorchEncoder(EncoderBackend):
    """The encoder module itself; bf16 is autocast around the encoder only (SAM's decoder stays fp32)."""

    name = "torch"
    precisions = ("fp32", "bf16")
    parity_checked = ("fp32", "bf16")
    exported = False

    def __init__(self, encoder: nn.Module, precision: str = "fp32", cache: ExportCache | None = None):
        super().__init__(encoder, precision, cache)
        self.encoder = encoder

    @classmethod
    def version(cls) -> str:
        return torch.__version__

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            return self.encoder(images).float()


def export_onnx(encoder: nn.Module, path: Path) -> None:
    """The encoder as an ONNX graph (TorchScript exporter, opset 17) for one image at a time:
    TinyViT reads the batch size in Python (``len(x)``), so the trace fixes it at 1."""
    side = cast(int, encoder.img_size)  # TinyViT's input side in pixels
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about TinyViT's Python-side shape checks
        torch.onnx.export(
            encoder, (torch.zeros(1, 3, side, side),), str(path), dynamo=False, opset_version=ONNX_OPSET,
            input_names=["image"], output_names=["embedding"],
        )


def _check_embedding(backend: EncoderBackend, encoder: nn.Module) -> None:
    """Refuse a freshly built graph whose embedding of a test image strays from torch fp32's."""
    images = selection_images(cast(int, encoder.img_size), 1)
    reference = TorchEncoder(encoder).encode(images)
    difference = (backend.encode(images) - reference).abs().max().item()
    if not difference <= EMBEDDING_TOLERANCE[backend.precision]:
        raise BackendError(f"{backend.label}: the exported encoder differs from torch by {difference:.3g}; not used")


class ExportedEncoder(EncoderBackend):
    """A backend that runs a graph exported from the encoder, built once and cached."""

    modules: ClassVar[tuple[str, ...]]  # Python modules it needs

    def __init__(self, encoder: nn.Module, precision: str, cache: ExportCache):
        super().__init__(encoder, precision, cache)
        reason = self.missing()
        if reason:
            raise BackendError(f"{self.name} cannot run here: {reason}")
        key = {
            "backend": self.name,
            "backend_version": self.version(),
            "precision": precision,
            "weights_sha256": weights_sha256(encoder),
            "image_size": encoder.img_size,
            "export_version": EXPORT_VERSION,
            **self.key_extras(),
        }
        built = False

        def build(folder: Path) -> None:
            nonlocal built
            self.build(encoder, folder)
            self.load(folder)
            _check_embedding(self, encoder)
            built = True

        self.folder = cache.load_or_build(key, build)
        if not built:
            self.load(self.folder)

    @classmethod
    def missing(cls) -> str | None:
        absent = [module for module in cls.modules if importlib.util.find_spec(module) is None]
        if not absent:
            return None
        names = " ".join(absent)  # the modules' distributions have their names
        return f"missing Python package(s) {', '.join(absent)}: pip install {names} (in Slicer's Python console: slicer.util.pip_install('{names}'))"

    def key_extras(self) -> dict:
        return {}

    @abstractmethod
    def build(self, encoder: nn.Module, folder: Path) -> None:
        """Write the exported graph's files into ``folder``."""

    @abstractmethod
    def load(self, folder: Path) -> None:
        """Make the graph in ``folder`` ready to run."""

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(images.detach().cpu().float().numpy())
        return torch.from_numpy(np.concatenate([self.encode_one(array[index : index + 1]) for index in range(len(array))]))

    @abstractmethod
    def encode_one(self, image: np.ndarray) -> np.ndarray:
        """The embedding [1, 256, 64, 64] of one preprocessed image [1, 3, S, S] (float32, contiguous)."""


def _threads() -> int:
    return torch.get_num_threads()


@register
class OpenVINOEncoder(ExportedEncoder):
    """OpenVINO on the CPU; bf16 is its inference precision hint (native bfloat16 CPUs only).

    The cache holds the model compiled for this CPU and precision, so a later start only imports it.
    """

    name = "openvino"
    precisions = ("fp32", "bf16")
    # fp32: the same embeddings as torch (4e-6) and the same Dice on all 12 cases; bf16: mean +0.0004,
    # largest case move 0.0079 (README, Speed)
    parity_checked = ("fp32", "bf16")
    modules = ("openvino", "onnx")
    BLOB = "encoder.blob"

    @classmethod
    def version(cls) -> str:
        import openvino

        return openvino.get_version()

    def key_extras(self) -> dict:
        return {"cpu": _core().get_property("CPU", "FULL_DEVICE_NAME"), "machine": platform.machine()}

    def config(self) -> dict:
        return {
            "INFERENCE_PRECISION_HINT": "bf16" if self.precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": _threads(),
        }

    def build(self, encoder: nn.Module, folder: Path) -> None:
        with tempfile.TemporaryDirectory() as scratch:
            onnx_path = Path(scratch) / "encoder.onnx"
            export_onnx(encoder, onnx_path)
            compiled = _core().compile_model(_core().read_model(str(onnx_path)), "CPU", self.config())
        (folder / self.BLOB).write_bytes(compiled.export_model().getvalue())

    def load(self, folder: Path) -> None:
        self.compiled = _core().import_model((folder / self.BLOB).read_bytes(), "CPU", self.config())
        self.request = self.compiled.create_infer_request()
        self.request_lock = threading.Lock()  # one infer request, possibly called from a background encoder thread

    def encode_one(self, image: np.ndarray) -> np.ndarray:
        with self.request_lock:
            self.request.infer({0: image}, share_inputs=True)
            return np.array(self.request.get_output_tensor(0).data, dtype=np.float32)


def _core():
    import openvino

    global _OPENVINO_CORE
    if _OPENVINO_CORE is None:
        _OPENVINO_CORE = openvino.Core()
    return _OPENVINO_CORE


_OPENVINO_CORE = None


@register
class OnnxRuntimeEncoder(ExportedEncoder):
    """ONNX Runtime's CPU execution provider, fp32."""

    name = "onnxruntime"
    precisions = ("fp32",)
    parity_checked = ("fp32",)  # the same Dice as torch fp32 on all 12 cases (README, Speed)
    modules = ("onnxruntime", "onnx")
    GRAPH = "encoder.onnx"

    @classmethod
    def version(cls) -> str:
        import onnxruntime

        return onnxruntime.__version__

    def key_extras(self) -> dict:
        return {"exporter": f"torch {torch.__version__}"}

    def build(self, encoder: nn.Module, folder: Path) -> None:
        export_onnx(encoder, folder / self.GRAPH)

    def load(self, folder: Path) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = _threads()
        self.session = onnxruntime.InferenceSession(str(folder / self.GRAPH), options, providers=["CPUExecutionProvider"])

    def encode_one(self, image: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"image": image})[0]


@dataclass(frozen=True)
class Candidate:
    backend: str
    precision: str

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision}"


def candidates(backend: str = "auto", precision: str = "auto", device: torch.device = torch.device("cpu")) -> list[Candidate]:
    """The backend × precision pairs a request allows here.

    A backend named explicitly is used even without a Dice parity record; "auto" only offers pairs
    with one, bf16 only on CPUs with native bfloat16, and exported graphs only on the CPU.
    """
    if backend not in BACKEND_CHOICES or (backend != "auto" and backend not in BACKENDS):
        raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKEND_CHOICES)}")
    if precision not in PRECISION_CHOICES:
        raise InputError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISION_CHOICES)}")
    if device.type != "cpu":
        if backend not in ("auto", "torch"):
            raise BackendError(f"the {backend} backend runs on the CPU; on {device.type} the encoder runs in torch")
        return [Candidate("torch", "fp32" if precision == "auto" else precision)]
    if backend != "auto":
        kind = BACKENDS[backend]
        reason = kind.missing()
        if reason:
            raise BackendError(f"{backend} cannot run here: {reason}")
        if precision != "auto":
            if precision not in kind.precisions:
                raise InputError(f"the {backend} backend has no {precision}; it runs {', '.join(kind.precisions)}")
            return [Candidate(backend, precision)]
    found = []
    for name, kind in BACKENDS.items():
        if backend not in ("auto", name) or kind.missing():
            continue
        for option in kind.parity_checked if backend == "auto" else kind.parity_checked or kind.precisions[:1]:
            if precision in ("auto", option) and (option != "bf16" or precision == "bf16" or cpu_has_native_bf16()):
                found.append(Candidate(name, option))
    if not found:
        raise InputError(f"no backend runs {precision} here; choose another --precision or --backend")
    return found


def every_pair(device: torch.device = torch.device("cpu")) -> list[Candidate]:
    """Every installed backend × precision that runs here, parity-checked or not (what ``bench`` compares)."""
    if device.type != "cpu":
        return [Candidate("torch", "fp32")]
    return [Candidate(name, option) for name, kind in BACKENDS.items() if not kind.missing()
            for option in kind.precisions if option != "bf16" or cpu_has_native_bf16()]


def build_backend(candidate: Candidate, encoder: nn.Module, cache: ExportCache | None = None) -> EncoderBackend:
    return BACKENDS[candidate.backend](encoder, candidate.precision, cache or ExportCache())


def selection_images(side: int, count: int) -> torch.Tensor:
    """Preprocessed synthetic slices for timing: a bright disc on a gradient (LiteMedSAM's 0..1 input)."""
    grid = torch.linspace(-1, 1, side)
    rows, columns = torch.meshgrid(grid, grid, indexing="ij")
    image = 0.3 + 0.2 * columns + 0.4 * (rows**2 + columns**2 < 0.25)
    images = torch.stack([image * (1 - 0.05 * index) for index in range(count)])[:, None].expand(-1, 3, -1, -1)
    return images.contiguous(memory_format=torch.channels_last)


def time_backends(backends: list[EncoderBackend], images: torch.Tensor, rounds: int = SELECTION_ROUNDS) -> dict[str, float]:
    """Median ms per slice of each backend, timed in interleaved rounds (ABAB…) after one warm-up each."""
    times: dict[str, list[float]] = {backend.label: [] for backend in backends}
    for backend in backends:
        backend.encode(images[:1])
    for _ in range(rounds):
        for backend in backends:
            started = time.perf_counter()
            for index in range(len(images)):
                backend.encode(images[index : index + 1])
            times[backend.label].append(1000 * (time.perf_counter() - started) / len(images))
    return {label: statistics.median(values) for label, values in times.items()}


def choose_encoder(
    encoder: nn.Module,
    device: torch.device,
    backend: str = "auto",
    precision: str = "auto",
    cache: ExportCache | None = None,
    slices: int = 1,
    log: Callable[[str], None] | None = None,
    rounds: int = SELECTION_ROUNDS,
) -> EncoderBackend:
    """The encoder backend for a request; among several candidates, the fastest measured here.

    The measurement (``slices`` synthetic slices, ``rounds`` interleaved rounds) is made
    once per machine, thread count and set of candidate versions; its result is kept in the cache
    folder. A candidate whose export fails is left out with a message.
    """
    cache = cache or ExportCache()
    options = candidates(backend, precision, device)
    if len(options) == 1:
        return build_backend(options[0], encoder, cache)
    key = {
        "candidates": [[option.backend, option.precision, BACKENDS[option.backend].version()] for option in options],
        "weights_sha256": weights_sha256(encoder),
        "cpu": platform.processor() or platform.machine(),
        "threads": _threads(),
        "export_version": EXPORT_VERSION,
    }
    record = cache.root / "choices" / (hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20] + ".json")
    chosen = _recorded_choice(record, key, options)
    if chosen is not None:
        return build_backend(chosen, encoder, cache)
    built = {}
    for option in options:
        try:
            built[option] = build_backend(option, encoder, cache)
        except BackendError as error:
            (log or print)(f"samprostate: note: {error}")
    if not built:
        raise BackendError(f"no encoder backend for --backend {backend} --precision {precision} could be built here")
    timings = time_backends(list(built.values()), selection_images(cast(int, encoder.img_size), slices), rounds)
    chosen = min(built, key=lambda option: timings[option.label])
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"key": key, "chosen": chosen.label, "ms_per_slice": timings}, indent=1, sort_keys=True), encoding="utf-8")
    if log:
        log("encoder backends, ms per slice: " + ", ".join(f"{label} {ms:.0f}" for label, ms in timings.items()) + f"; using {chosen.label}")
    return built[chosen]


def _recorded_choice(record: Path, key: dict, options: list[Candidate]) -> Candidate | None:
    try:
        saved = json.loads(record.read_text(encoding="utf-8"))
        return next(option for option in options if saved["key"] == key and option.label == saved["chosen"])
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return None
