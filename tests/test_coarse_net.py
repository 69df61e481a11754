import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FIXTURES, dice, read_mask
from SAMProstateSDGLib.core.catalog import MANIFEST_SCHEMA, MODELS_FOLDER, default_entry, schema_errors
from SAMProstateSDGLib.core.checksums import full_precision, int8_per_channel, sha256_of
from SAMProstateSDGLib.core.errors import InputError
from SAMProstateSDGLib.io.dataset import find_cases
from SAMProstateSDGLib.io.volume_io import normalised_array, read_volume
from SAMProstateSDGLib.masks.boxes import COARSE_THRESHOLD
from SAMProstateSDGLib.masks.canvas import Canvas
from SAMProstateSDGLib.modeling.coarse_net import (
    CoarseNetConfig,
    CoarseSegmenter,
    build_coarse_net,
    load_coarse_checkpoint,
    save_coarse_checkpoint,
    save_coarse_ensemble,
    with_context,
)
from SAMProstateSDGLib.training.coarse import CoarseTrainingOptions, split_cases, train_coarse_net


def test_shipped_coarse_model_matches_its_manifest_and_size_limit():
    entry = default_entry("coarse")
    manifest = json.loads(entry.path.with_suffix(".json").read_text())
    assert manifest["model"] == "coarse" and manifest["sha256"] == entry.sha256 == sha256_of(entry.path)
    assert manifest["site"] == "RUNMC" and manifest["epochs"] >= 1
    assert set(manifest["validation_cases"]).isdisjoint(manifest["training_cases"])
    (config,) = CoarseSegmenter.from_checkpoint(entry.path, torch.device("cpu")).configs
    assert config == CoarseNetConfig.from_json(manifest["architecture"]) == CoarseNetConfig(input_representation="log-contrast", context_mm=4.0)
    assert f"--input-representation log-contrast --context-mm {config.context_mm}" in manifest["command"]
    assert entry.path.stat().st_size < 30 * 2**20
    assert entry.path.parent == MODELS_FOLDER


@pytest.mark.parametrize("case", ["Case00", "Case29", "P158-020"])
def test_coarse_network_finds_the_gland_on_each_site(segmenter, case):
    image = read_volume(FIXTURES / f"{case}.nii.gz")
    probabilities = segmenter.coarse.probabilities(normalised_array(image), image)
    assert probabilities.shape == (image.GetDepth(), image.GetHeight(), image.GetWidth())
    assert dice(probabilities > COARSE_THRESHOLD, read_mask(FIXTURES / f"{case}_seg.nii.gz")) > 0.7


def test_checkpoint_round_trip_gives_the_same_probabilities(segmenter, tmp_path):
    path = tmp_path / "coarse.pt"
    for network, config in zip(segmenter.coarse.networks, segmenter.coarse.configs):
        save_coarse_checkpoint(path, network, config)
        reloaded_network, reloaded_config = load_coarse_checkpoint(path)
        assert reloaded_config == config
        reloaded = CoarseSegmenter([reloaded_network], [reloaded_config], torch.device("cpu"))
        image = read_volume(FIXTURES / "Case29.nii.gz")
        slices = config.canvas.to_canvas(normalised_array(image), image)
        original = CoarseSegmenter([network], [config], torch.device("cpu"))
        spacing = image.GetSpacing()[2]
        assert np.allclose(reloaded.canvas_probabilities(slices, spacing), original.canvas_probabilities(slices, spacing), atol=1e-6)


def test_wrong_checkpoints_are_refused(tmp_path):
    entry = default_entry("coarse")
    with pytest.raises(InputError, match="checksum mismatch"):
        load_coarse_checkpoint(entry.path, "f" * 64)
    checkpoint = torch.load(entry.path, weights_only=True)
    checkpoint["state_dict"].pop(next(iter(checkpoint["state_dict"])))
    torch.save(checkpoint, tmp_path / "missing_key.pt")
    with pytest.raises(InputError, match="wrong keys"):
        load_coarse_checkpoint(tmp_path / "missing_key.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not a coarse-model checkpoint"):
        load_coarse_checkpoint(tmp_path / "other.pt")


def test_split_is_by_case_nine_to_one_and_reproducible(data):
    cases = find_cases(data, site="RUNMC")
    training, validation = split_cases(cases, 0.1, seed=0)
    assert len(cases) == 29 and len(validation) == 3 and len(training) == 26
    assert {case.name for case in training}.isdisjoint(case.name for case in validation)
    assert split_cases(cases, 0.1, seed=0) == (training, validation)


class Stopped(Exception):
    pass


def stop_after_the_first_epoch(line: str) -> None:
    """A log that stops the training once epoch 1's state is saved (as Stop in Slicer does)."""
    if line.startswith("epoch 1/"):
        raise Stopped


def test_training_keeps_the_best_checkpoint_and_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
    """Stopped after epoch 1 of 2 and resumed, the weights, optimiser state and history equal those of an
    uninterrupted run, bit for bit (each epoch's randomness comes from the seed and the epoch alone)."""
    def train(output: Path, resume: bool = False, log=lambda line: None) -> dict:
        options = CoarseTrainingOptions(data=FIXTURES, site="fixture", output=output, epochs=2, batch_size=4, resume=resume)
        return train_coarse_net(options, torch.device("cpu"), log=log)

    with pytest.raises(Stopped):
        train(tmp_path / "stopped", log=stop_after_the_first_epoch)
    changed = CoarseTrainingOptions(data=FIXTURES, site="fixture", output=tmp_path / "stopped", epochs=2, batch_size=4, resume=True, learning_rate=2e-3)
    with pytest.raises(InputError, match=r"was saved by a run with other options \(learning_rate 0.001 -> 0.002\)"):
        train_coarse_net(changed, torch.device("cpu"), log=lambda line: None)  # its optimiser state would silently keep 0.001
    longer = dataclasses.replace(changed, learning_rate=1e-3, epochs=4)  # the saved cosine ends at epoch 2, then climbs again
    with pytest.raises(InputError, match=r"other options \(epochs 2 -> 4\) \(its learning-rate schedule is planned over 2 epochs\)"):
        train_coarse_net(longer, torch.device("cpu"), log=lambda line: None)
    resumed = train(tmp_path / "stopped", resume=True)
    assert [entry["epoch"] for entry in resumed["history"]] == [1, 2]
    assert resumed["sha256"] == sha256_of(tmp_path / "stopped" / "coarse.pt")
    load_coarse_checkpoint(tmp_path / "stopped" / "coarse.pt", resumed["sha256"])
    assert resumed["best_validation_dice"] == round(max(entry["validation_dice"] for entry in resumed["history"]), 4)

    uninterrupted = train(tmp_path / "uninterrupted")
    assert uninterrupted["history"] == resumed["history"]
    states = [torch.load(tmp_path / run / "last_state.pt", weights_only=True) for run in ("stopped", "uninterrupted")]
    for name, weights in states[0]["network"].items():
        assert torch.equal(weights, states[1]["network"][name]), name
    moments = [[value for entry in state["optimiser"]["state"].values() for value in entry.values()] for state in states]
    assert all(torch.equal(*pair) for pair in zip(*moments))


def test_another_coarse_network_reuses_the_loaded_sam(segmenter):
    entry = default_entry("coarse")
    swapped = segmenter.with_coarse(entry.path, entry.sha256)
    assert swapped.sam is segmenter.sam and swapped.coarse is not segmenter.coarse
    image = read_volume(FIXTURES / "Case29.nii.gz")
    normalised = normalised_array(image)
    assert np.allclose(swapped.coarse.probabilities(normalised, image), segmenter.coarse.probabilities(normalised, image))
    with pytest.raises(InputError, match="checksum mismatch"):
        segmenter.with_coarse(entry.path, "0" * 64)


def test_dg_fine_tuning_starts_from_the_given_weights_and_records_them(data, tmp_path):
    initial = tmp_path / "initial.pt"
    initial.write_bytes(default_entry("coarse").path.read_bytes())
    options = CoarseTrainingOptions(
        data=data, site="RUNMC", output=tmp_path / "run", epochs=1, batch_size=8, learning_rate=1e-6, max_cases=2,
        augmentation="dg", initial_weights=initial, input_representation="log-contrast", context_mm=4.0,
    )
    manifest = train_coarse_net(options, torch.device("cpu"), log=lambda message: None)
    assert manifest["augmentation"] == "dg" and "--augmentation dg --input-representation log-contrast --context-mm 4.0 --initial-weights" in manifest["command"]
    assert manifest["initial_weights"]["sha256"] == sha256_of(initial)
    assert schema_errors(json.loads((tmp_path / "run" / "coarse.json").read_text()), MANIFEST_SCHEMA) == []  # what the code writes is what may ship
    assert manifest["best_validation_dice"] > 0.7  # the shipped net's skill, barely moved by a tiny learning rate
    initial.write_bytes(b"other weights under the same name")  # a resumed run would record weights it did not start from
    with pytest.raises(InputError, match=r"other options \(initial_weights_sha256 "):
        train_coarse_net(dataclasses.replace(options, resume=True), torch.device("cpu"), log=lambda message: None)


def test_log_contrast_cancels_a_smooth_field_and_a_gamma_change_on_a_real_slice():
    image = read_volume(FIXTURES / "Case29.nii.gz")
    config = CoarseNetConfig(input_representation="log-contrast")
    slices = config.canvas.to_canvas(normalised_array(image), image)
    gland = config.canvas.to_canvas(read_mask(FIXTURES / "Case29_seg.nii.gz").astype(np.float32), image, nearest=True) > 0
    columns = np.arange(config.canvas.size) / config.canvas.size
    field = np.exp(3.0 * columns)[None, None, :]  # 20x brighter on one side than the other
    shifted = np.clip(slices * field / field.max(), 0, 1) ** 0.6
    represent = build_coarse_net(config).represent
    assert represent is not None
    before, after = (represent(torch.from_numpy(array.astype(np.float32))[:, None])[:, 0].numpy() for array in (slices, shifted))
    assert np.corrcoef(before[gland], after[gland])[0, 1] > 0.98
    assert np.corrcoef(slices[gland], shifted[gland])[0, 1] < 0.9  # the raw intensities do change


def test_the_input_representation_is_stored_in_the_checkpoint_and_older_ones_read_as_intensity_without_z_context(tmp_path):
    config = CoarseNetConfig(input_representation="log-contrast", contrast_sigma_mm=6.0)
    torch.manual_seed(0)
    network = build_coarse_net(config)
    save_coarse_checkpoint(tmp_path / "coarse.pt", network, config)
    reloaded, reloaded_config = load_coarse_checkpoint(tmp_path / "coarse.pt")
    assert reloaded_config == config
    assert reloaded.represent is not None and reloaded.represent.keywords == {"sigma_px": 6.0}
    save_coarse_checkpoint(tmp_path / "older.pt", build_coarse_net(CoarseNetConfig()), CoarseNetConfig())
    older = torch.load(tmp_path / "older.pt", weights_only=True)  # as written before these settings existed:
    older["config"] = json.dumps({key: value for key, value in json.loads(older["config"]).items()
                                  if key not in ("input_representation", "contrast_sigma_mm", "context_mm")})
    torch.save(older, tmp_path / "older.pt")
    assert load_coarse_checkpoint(tmp_path / "older.pt")[1] == CoarseNetConfig()  # intensity, no z context
    unknown = {**older, "config": json.dumps({**json.loads(older["config"]), "input_representation": "fourier"})}
    torch.save(unknown, tmp_path / "unknown.pt")
    with pytest.raises(InputError, match="cannot build .*'fourier'"):
        load_coarse_checkpoint(tmp_path / "unknown.pt")


def test_an_ensemble_checkpoint_averages_its_networks_probabilities(tmp_path, monkeypatch):
    shipped = default_entry("coarse").path
    torch.manual_seed(0)
    other_config = CoarseNetConfig()  # intensity, no z context
    save_coarse_checkpoint(tmp_path / "other.pt", build_coarse_net(other_config), other_config)
    read = []
    with monkeypatch.context() as patch:  # count the checkpoint reads (torch.load still does them)
        load = torch.load
        patch.setattr(torch, "load", lambda path, *args, **kwargs: read.append(Path(path).name) or load(path, *args, **kwargs))
        save_coarse_ensemble(tmp_path / "ensemble.pt", [shipped, tmp_path / "other.pt"])
    assert sorted(read) == sorted([shipped.name, "other.pt"])  # each member read once
    ensemble = CoarseSegmenter.from_checkpoint(tmp_path / "ensemble.pt", torch.device("cpu"))
    assert [config.input_representation for config in ensemble.configs] == ["log-contrast", "intensity"]
    image = read_volume(FIXTURES / "Case29.nii.gz")
    slices, spacing = ensemble.canvas.to_canvas(normalised_array(image), image), image.GetSpacing()[2]
    members = [CoarseSegmenter.from_checkpoint(path, torch.device("cpu")).canvas_probabilities(slices, spacing) for path in (shipped, tmp_path / "other.pt")]
    assert not np.allclose(*members, atol=0.05)
    np.testing.assert_allclose(ensemble.canvas_probabilities(slices, spacing), (members[0] + members[1]) / 2, atol=0.02)  # int8 weights
    assert (tmp_path / "ensemble.pt").stat().st_size < 0.6 * (shipped.stat().st_size + (tmp_path / "other.pt").stat().st_size)
    with pytest.raises(InputError, match="is an ensemble of 2 coarse networks"):
        load_coarse_checkpoint(tmp_path / "ensemble.pt")
    with pytest.raises(ValueError, match="same canvas"):
        CoarseSegmenter([build_coarse_net(other_config)] * 2, [other_config, CoarseNetConfig(canvas=Canvas(1.5, 128))], torch.device("cpu"))


@pytest.mark.parametrize("spacing_mm", [1.6, 3.0, 4.0])
def test_z_context_reads_the_volume_the_same_millimetres_away_at_any_slice_spacing(spacing_mm):
    heights = np.arange(12) * spacing_mm  # each slice holds its own height in mm
    slices = np.broadcast_to(heights[:, None, None], (12, 5, 5)).astype(np.float32)
    context = with_context(slices, spacing_mm, context_mm=4.0)
    assert context.shape == (12, 3, 5, 5)
    expected = np.stack([np.clip(heights + shift, 0, heights[-1]) for shift in (-4.0, 0.0, 4.0)], axis=1)
    np.testing.assert_allclose(context[:, :, 2, 2], expected, atol=1e-5)
    assert with_context(slices, spacing_mm, context_mm=0.0).shape == (12, 1, 5, 5)


def test_a_z_context_network_reads_three_channels_and_its_checkpoint_says_so(tmp_path):
    config = CoarseNetConfig(context_mm=4.0)
    network = build_coarse_net(config)
    assert network.encoder.conv1.in_channels == 3
    save_coarse_checkpoint(tmp_path / "coarse.pt", network, config)
    assert load_coarse_checkpoint(tmp_path / "coarse.pt")[1] == config


def test_int8_storage_moves_each_trained_weight_by_at_most_half_a_step(tmp_path):
    state = full_precision(torch.load(default_entry("coarse").path, weights_only=True)["state_dict"])
    stored = int8_per_channel(state)
    restored = full_precision(stored)
    assert restored.keys() == state.keys()
    for name, weights in state.items():
        if isinstance(stored[name], dict):
            step = stored[name]["scale"]
            assert stored[name]["int8"].dtype == torch.int8 and step.shape[0] == weights.shape[0]
            assert torch.all((restored[name] - weights).abs() <= step / 2 + 1e-6), name
        else:
            assert weights.dim() < 2 and torch.allclose(restored[name], weights, rtol=1e-3, atol=1e-4), name
