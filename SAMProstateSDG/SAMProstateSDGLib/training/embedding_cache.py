"""Encoded training slices on disk, so decoder training never loads or runs the image encoder.

One file per case holds the fp16 image embeddings of every slice, the intermediate encoder
features DeSAM fuses (and SAMed's LoRA training starts from), the reference labels and the
coarse network's probabilities, all on one grid: the slice's own pixels ("native", what box
prompts live in) or the fixed-field-of-view encoder canvas ("canvas", what the self-prompting
methods read). The cache folder is named by a hash of the base SAM checkpoint, the coarse
checkpoint and the preprocessing, so a change to any of them starts a new cache instead of
reusing stale embeddings.

Augmented copies (``augmented_copies``) are more files in the same folder, ``CASE~dgK.pt``: the case's
volume under one seeded draw of the DG appearance augmentation (``dg_appearance``: resolution, smooth
fields, curves, random convolutions, noise), then the coarse network and the encoder as for the original.
A decoder trained on them sees other-looking scanners and the coarse network's boxes on them, which are
less exact than on the site it was trained on. The draw depends only on the case's name and K.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.transforms import Compose
from tqdm import tqdm

from ..core.checksums import load_weights, sha256_of
from ..core.files import write_atomically
from ..io.dataset import Case, canonical_zones
from ..io.volume_io import normalised_array
from ..masks.canvas import ENCODER_FIELD_OF_VIEW_MM
from ..pipeline.segmenter import ProstateSegmenter
from .dg_augmentation import dg_appearance

PREPROCESSING = {
    "normalisation": "percentile 0.5-99.5 per volume to 0..1",
    "encoder_input": "longest side resized, padded",
    "stored": "embedding and encoder_stages skips, fp16",
}
ENCODER_GRIDS = ("native", "canvas")
SOURCE_SEPARATOR = "@"  # a cache file is NAME@DIGEST.pt (``cache_files``)


def preprocessing(grid: str) -> dict[str, str]:
    if grid not in ENCODER_GRIDS:
        raise ValueError(f"unknown encoder grid {grid!r}")
    if grid == "native":
        return PREPROCESSING
    return dict(PREPROCESSING, encoder_input=f"{ENCODER_FIELD_OF_VIEW_MM:g} mm canvas centred on each slice, at the encoder's input size")


@dataclass
class CachedCase:
    name: str
    embeddings: torch.Tensor  # [slices, 256, 64, 64] float16
    skips: list[torch.Tensor]  # [slices, C, H, W] float16 per intermediate encoder stage
    labels: np.ndarray  # [slices, rows, columns] uint8 (0 background, 1 TZ, 2 PZ)
    coarse: np.ndarray  # [slices, rows, columns] float16 gland probabilities
    spacing_xy: tuple[float, float]


def cache_key(sam_checkpoint: Path, coarse_checkpoint: Path, grid: str = "native") -> str:
    signature = json.dumps(
        {"sam": sha256_of(sam_checkpoint), "coarse": sha256_of(coarse_checkpoint), "preprocessing": preprocessing(grid)},
        sort_keys=True,
    )
    return hashlib.sha256(signature.encode()).hexdigest()[:16]


def source_digest(case: Case) -> str:
    """A short hash of the contents of the case's image and mask files (of every file, for a folder)."""
    digest = hashlib.sha256()
    for path in (case.image, case.mask):
        for file in sorted(item for item in path.rglob("*") if item.is_file()) if path.is_dir() else [path]:
            digest.update(sha256_of(file).encode())
    return digest.hexdigest()[:16]


def cache_files(folder: Path, case: Case, augmented_copies: int = 0) -> list[Path]:
    """The cache files of ``case`` and of its ``augmented_copies``, named by the case and its files' contents
    (``source_digest``), so that another site's case of the same name, or a corrected mask, is encoded anew rather
    than read from a file of the same name."""
    digest = source_digest(case)
    names = [case.name] + [augmented_name(case.name, copy) for copy in range(1, augmented_copies + 1)]
    return [folder / f"{name}{SOURCE_SEPARATOR}{digest}.pt" for name in names]


def augmented_name(case_name: str, copy: int) -> str:
    """The cache file stem of a case's ``copy``-th augmented copy (1, 2, ...)."""
    return f"{case_name}~dg{copy}"


def augmented_image(image: sitk.Image, case_name: str, copy: int) -> sitk.Image:
    """``image`` under one draw of the DG appearance augmentation, the same for the same case and copy; its geometry kept."""
    augmentation = Compose(dg_appearance())
    augmentation.set_random_state(int.from_bytes(hashlib.sha256(augmented_name(case_name, copy).encode()).digest()[:4], "little"))
    voxels = np.asarray(augmentation({"image": normalised_array(image)})["image"], dtype=np.float32)
    augmented = sitk.GetImageFromArray(voxels)
    augmented.CopyInformation(image)
    return augmented


def build_cache(segmenter: ProstateSegmenter, cases: list[Case], folder: Path, grid: str = "native", augmented_copies: int = 0) -> list[Path]:
    """Encode every slice of every case once, on the ``grid``, and of ``augmented_copies`` augmented copies of each;
    files already cached are skipped. Returns the paths of the cases, each followed by its copies."""
    preprocessing(grid)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for case in tqdm(cases, desc=f"encoding cases ({grid} grid)"):
        files = cache_files(folder, case, augmented_copies)
        paths += files
        for copy, path in enumerate(files):
            if not path.is_file():
                image, labels = case.read()
                _encode(segmenter, image if copy == 0 else augmented_image(image, case.name, copy), labels, path, grid)
    return paths


def _encode(segmenter: ProstateSegmenter, image: sitk.Image, labels: np.ndarray, path: Path, grid: str) -> None:
    volume = segmenter.prepare(image)
    coarse, spacing_xy = segmenter.coarse_probabilities(volume), volume.spacing_xy
    if grid == "canvas":
        features = volume.encoder_features()
        labels = volume.canvas.to_canvas(labels, image, nearest=True).astype(np.uint8)
        coarse, spacing_xy = volume.canvas.to_canvas(coarse, image), (volume.canvas.spacing_mm,) * 2
    else:
        features = segmenter.sam.encode_features(volume.normalised)
    cached = {
        "embeddings": features.embedding.half().cpu(),
        "skips": [skip.half().cpu() for skip in features.skips],
        "labels": torch.from_numpy(labels),
        "coarse": torch.from_numpy(coarse.astype(np.float16)),
        "spacing_xy": list(spacing_xy),
    }
    write_atomically(path, partial(torch.save, cached))


CACHED_FEATURES = ("embeddings", "skips", "coarse")


def load_cached_case(path: Path, features: tuple[str, ...] = CACHED_FEATURES) -> CachedCase:
    """A cached case with the labels and those of its ``features`` a method reads (the rest left empty, to save memory).

    "stem" keeps only the first skip feature (TinyViT's stem output, all SAMed reads).
    """
    data = load_weights(path, "embedding cache file")
    return CachedCase(
        path.stem.split(SOURCE_SEPARATOR)[0],
        data["embeddings"] if "embeddings" in features else torch.empty(0),
        data["skips"] if "skips" in features else data["skips"][:1] if "stem" in features else [],
        canonical_zones(data["labels"].numpy()),  # also for caches written before zones were made canonical
        data["coarse"].numpy() if "coarse" in features else np.empty(0, np.float16),
        tuple(data["spacing_xy"]),
    )
