"""``embed``, ``train``, ``bench``, ``segment --merge-slices`` and a batch given as a folder, end to end through the
command's ``main`` in this process, on the fixtures cut to two slices (seconds per command, not minutes)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import FIXTURES, cut_data_folder, dice, read_mask, samprostate

CASES = ("Case00", "Case29", "P158-020")


@pytest.fixture(scope="module")
def tiny_site(tmp_path_factory) -> Path:
    """A data folder of the three fixture cases, slices 1-2 of each, as site "tiny" of split "unseen"."""
    images = {name: FIXTURES / f"{name}.nii.gz" for name in CASES}
    return cut_data_folder(tmp_path_factory.mktemp("tiny"), images, lambda depth: slice(1, 3), "tiny", "unseen")


@pytest.fixture(scope="module")
def embedded(tiny_site, tmp_path_factory) -> tuple[Path, str]:
    """The first case of the site (Case00) encoded on both grids."""
    cache = tmp_path_factory.mktemp("cache")
    result = samprostate("embed", "--data", tiny_site, "--site", "tiny", "--max-cases", "1", "--cache", cache, "--device", "cpu")
    return cache, result.stdout


def test_embed_encodes_every_slice_of_the_site_on_both_grids(embedded):
    from SAMProstateSDGLib.training.embedding_cache import load_cached_case

    cache, stdout = embedded
    lines = stdout.strip().splitlines()
    assert [line.split(" in ")[0] for line in lines] == ["1 cases encoded on the native grid", "1 cases encoded on the canvas grid"]
    folders = [Path(line.split(" in ")[1]) for line in lines]
    assert len(set(folders)) == 2 and all(folder.parent == cache for folder in folders)
    files = [list(folder.iterdir()) for folder in folders]
    assert all(len(found) == 1 and found[0].name.startswith("Case00@") for found in files)  # named by the case and its files' contents
    native, canvas = (load_cached_case(found[0]) for found in files)
    assert native.name == canvas.name == "Case00"
    assert tuple(native.embeddings.shape) == tuple(canvas.embeddings.shape) == (2, 256, 64, 64)  # two slices, LiteMedSAM's embedding
    assert not torch.equal(native.embeddings, canvas.embeddings)  # two ways to fit a slice in the encoder's input
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(FIXTURES / "Case00_seg.nii.gz")))[1:3] > 0
    assert np.array_equal(native.labels > 0, reference)


def test_train_fine_tunes_the_decoder_from_the_cache_for_one_epoch(embedded, tiny_site, tmp_path):
    """The case already cached is read, not encoded again; the two missing ones are encoded first. The trained decoder
    then segments with --method-model."""
    from SAMProstateSDGLib.core.catalog import default_entry

    cache, _ = embedded
    before = {path: path.stat().st_mtime_ns for path in cache.rglob("*.pt")}
    result = samprostate("train", "--method", "sammed", "--data", tiny_site, "--site", "tiny", "--cache", cache, "--device", "cpu",
                         "--epochs", "1", "--output", tmp_path / "run")
    after = {path: path.stat().st_mtime_ns for path in cache.rglob("*.pt")}
    assert {path: after[path] for path in before} == before
    assert sorted(path.name.split("@")[0] for path in after.keys() - before.keys()) == ["Case29", "P158-020"]
    manifest = json.loads((tmp_path / "run" / "sammed.json").read_text())
    assert sorted(manifest["training_cases"] + manifest["validation_cases"]) == sorted(CASES) and len(manifest["validation_cases"]) == 1
    assert [entry["epoch"] for entry in manifest["history"]] == [0, 1] and manifest["epochs"] == 1
    weights = (tmp_path / "run" / "sammed.pt").read_bytes()
    assert manifest["sha256"] == hashlib.sha256(weights).hexdigest()
    assert f"best validation Dice {manifest['best_validation_dice']:.4f}; wrote {tmp_path / 'run' / 'sammed.pt'}" in result.stdout
    trained = torch.load(tmp_path / "run" / "sammed.pt", weights_only=True)
    shipped = {key.removeprefix("mask_decoder."): value for key, value in torch.load(default_entry("sam").path, weights_only=True).items()
               if key.startswith("mask_decoder.")}
    assert trained.keys() == shipped.keys()
    assert any(not torch.equal(trained[key].float(), shipped[key].float()) for key in trained)  # one epoch moved the decoder

    # segment runs the trained decoder with --method-model, and its report names that file
    from SAMProstateSDGLib.apps.cli import _check_model_options, _method_segmenter, build_parser

    model = tmp_path / "run" / "sammed.pt"
    options = ["segment", tiny_site / "P158-020.nii.gz", "-o", tmp_path / "seg.nii.gz", "--method", "sammed", "--method-model", model,
               "--device", "cpu", "--backend", "torch", "--precision", "fp32"]
    arguments = build_parser().parse_args(map(str, options))
    _check_model_options(arguments)
    decoder = _method_segmenter(arguments).base.sam.sam.mask_decoder.state_dict()
    assert all(torch.equal(decoder[key], trained[key].to(decoder[key].dtype)) for key in trained)
    samprostate(*options, "--report", tmp_path / "report.json")
    models = {item["role"]: item for item in json.loads((tmp_path / "report.json").read_text())["provenance"]["models"]}
    assert models["method"] == {"role": "method", "id": str(model.resolve()), "sha256": manifest["sha256"]}


def test_bench_times_each_path_on_a_small_data_folder(tiny_site, tmp_path):
    samprostate("bench", "--data", tiny_site, "--cases", "1", "--backend", "torch", "--precision", "fp32", "--review-seconds", "0.5",
                "--rounds", "1", "--output", tmp_path / "bench.md")
    report = (tmp_path / "bench.md").read_text(encoding="utf-8")
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data["cases"] == ["Case00"] and list(data["paths"]) == ["naive", "torch fp32", "merged"]
    timings = {path: entries[0] for path, entries in data["paths"].items()}
    assert all(timing["slices"] == 2 and timing["total"] > 0 for timing in timings.values())
    assert timings["naive"]["dice"] == timings["torch fp32"]["dice"] > 0.85  # the same masks, only faster
    assert data["box_proposal_ms"]["same_boxes"] is True
    assert "| Stage | naive | torch fp32 | merged |" in report and "| **total** |" in report and "chose torch fp32" in report
    assert data["wait_after_review_s"]["review"] == 0.5 and "after a 0.5 s box review" in report
    variants = {variant["name"]: variant["max_embedding_difference"] for variant in data["encoder_variants"]}
    assert list(variants) == ["plain torch fp32, batch 1 (naive)", "torch fp32, batch 1", "torch fp32, batch 4 (GPU)"]
    assert variants["plain torch fp32, batch 1 (naive)"] == 0.0 and max(variants.values()) < 1e-3  # folding, layout and batching keep the embeddings


def test_merge_slices_encodes_four_crops_at_once_and_keeps_a_good_dice(segmenter, tmp_path):
    image = FIXTURES / "P158-020.nii.gz"
    samprostate("segment", image, "-o", tmp_path / "merged.nii.gz", "--merge-slices", "--boxes-out", tmp_path / "boxes.json")
    merged = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "merged.nii.gz")))
    reference = read_mask(FIXTURES / "P158-020_seg.nii.gz")
    assert dice(merged, reference) > 0.85
    volume = segmenter.prepare(sitk.ReadImage(str(image)))
    boxes = segmenter.propose_boxes(volume)
    entries = json.loads((tmp_path / "boxes.json").read_text())["boxes"]
    assert len(entries) == len(boxes) == 4
    assert all(set(entry["confidence"]) == {"predicted_iou", "coarse_agreement", "relative_area", "flagged"} for entry in entries)
    one_at_a_time = segmenter.segment_with_boxes(volume, boxes)
    assert not np.array_equal(merged > 0, one_at_a_time > 0)  # each slice went through the encoder at half resolution
    assert abs(dice(merged, reference) - dice(one_at_a_time, reference)) < 0.05


def test_a_batch_given_as_a_folder_segments_its_volumes_and_skips_the_masks(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("Case29.nii.gz", "Case29_seg.nii.gz"):
        (inputs / name).symlink_to(FIXTURES / name)
    result = samprostate("segment", inputs, "-o", tmp_path / "labels")
    assert sorted(path.name for path in (tmp_path / "labels").iterdir()) == ["Case29.nii.gz"]
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "labels" / "Case29.nii.gz")))
    assert dice(labels, read_mask(FIXTURES / "Case29_seg.nii.gz")) > 0.8
    assert f"{tmp_path / 'labels' / 'Case29.nii.gz'}: prostate on 4 of 4 slices" in result.stdout
