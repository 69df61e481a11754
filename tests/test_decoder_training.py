import shutil

import pytest
import torch

from conftest import FIXTURES
from SAMProstateSDGLib.dataset import find_cases
from SAMProstateSDGLib.decoder_training import DecoderTrainingOptions, train_mask_decoder
from SAMProstateSDGLib.embedding_cache import build_cache, cache_key, load_cached_case
from SAMProstateSDGLib.model_catalog import default_entry
from SAMProstateSDGLib.sam_engine import SamEngine, load_mask_decoder, load_sam


@pytest.fixture(scope="module")
def cached(segmenter, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache")
    cases = find_cases(FIXTURES)
    return cases, folder, build_cache(segmenter, cases, folder)


def test_cache_key_follows_the_models(tmp_path):
    sam, coarse = default_entry("sam").path, default_entry("coarse").path
    changed = tmp_path / "coarse.pt"
    shutil.copy(coarse, changed)
    assert cache_key(sam, coarse) == cache_key(sam, changed)
    with open(changed, "ab") as handle:
        handle.write(b"\0")
    assert cache_key(sam, coarse) != cache_key(sam, changed)


def test_cache_holds_fp16_embeddings_and_is_not_rebuilt(cached, segmenter, monkeypatch):
    cases, folder, paths = cached
    case = load_cached_case(paths[0])
    assert case.embeddings.dtype == torch.float16 and case.embeddings.shape[1:] == (256, 64, 64)
    assert case.labels.shape == case.coarse.shape and len(case.labels) == len(case.embeddings)
    assert set(case.labels.ravel().tolist()) <= {0, 1, 2}
    monkeypatch.setattr(segmenter.sam, "encode", lambda slices: pytest.fail("cached case encoded again"))
    assert build_cache(segmenter, cases, folder) == paths


def test_sammed_trains_only_the_mask_decoder_and_resumes(cached, tmp_path):
    _, _, paths = cached
    entry = default_entry("sam")
    engine = SamEngine(load_sam(entry.model_type, entry.path, entry.sha256), torch.device("cpu"))
    encoder_before = {name: value.clone() for name, value in engine.sam.image_encoder.state_dict().items()}
    decoder_before = {name: value.clone() for name, value in engine.sam.mask_decoder.state_dict().items()}
    training = [load_cached_case(path) for path in paths[:2]]
    validation = [load_cached_case(paths[2])]
    options = DecoderTrainingOptions(tmp_path, epochs=1, learning_rate=1e-3, accumulate=2)
    first = train_mask_decoder(engine, training, validation, options, {"data": "fixture"}, log=lambda message: None)
    assert [entry["epoch"] for entry in first["history"]] == [0, 1]
    assert all(torch.equal(value, encoder_before[name]) for name, value in engine.sam.image_encoder.state_dict().items())
    assert any(not torch.equal(value, decoder_before[name]) for name, value in engine.sam.mask_decoder.state_dict().items())
    reloaded = load_mask_decoder(load_sam(entry.model_type, entry.path), tmp_path / "sammed.pt", first["sha256"])
    assert reloaded.mask_decoder.state_dict().keys() == decoder_before.keys()
    options.epochs, options.resume = 2, True
    resumed = train_mask_decoder(engine, training, validation, options, {"data": "fixture"}, log=lambda message: None)
    assert [entry["epoch"] for entry in resumed["history"]] == [0, 1, 2]
    assert resumed["best_validation_dice"] == round(max(entry["validation_dice"] for entry in resumed["history"]), 4)


def test_shipped_sammed_decoder_shares_the_encoder_and_segments_an_unseen_case(segmenter):
    from conftest import dice, read_mask
    from SAMProstateSDGLib.model_catalog import catalog_entry
    from SAMProstateSDGLib.volume_io import read_volume

    entry = catalog_entry("sammed-litemedsam-runmc", "decoder")
    assert entry.path.stat().st_size < 30 * 2**20
    sammed = segmenter.with_method("sammed")
    assert sammed.sam.sam.image_encoder is segmenter.sam.sam.image_encoder
    assert sammed.sam.sam.mask_decoder is not segmenter.sam.sam.mask_decoder
    volume = segmenter.prepare(read_volume(FIXTURES / "P158-020.nii.gz"))
    boxes = segmenter.propose_boxes(volume)
    zero_shot = segmenter.segment_with_boxes(volume, boxes)
    encoded = dict(volume.encoded.embeddings)
    fine_tuned = sammed.segment_with_boxes(volume, boxes)
    assert volume.encoded.embeddings.keys() == encoded.keys()  # no slice encoded again
    assert (fine_tuned != zero_shot).any()
    assert dice(fine_tuned, read_mask(FIXTURES / "P158-020_seg.nii.gz")) > 0.8
