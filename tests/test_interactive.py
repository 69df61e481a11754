"""The point-trained interactive decoder on real fixture slices: clicks as points, the previous mask fed back,
the click simulation driving it, its training step, and the CLI's points."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from conftest import FIXTURES, read_mask
from SAMProstateSDGLib.apps.cli import main
from SAMProstateSDGLib.core.catalog import INTERACTIVE_KIND
from SAMProstateSDGLib.io.boxes_json import read_prompts, write_boxes
from SAMProstateSDGLib.io.volume_io import read_volume
from SAMProstateSDGLib.masks.boxes import boxes_from_labels
from SAMProstateSDGLib.masks.clicks import Click
from SAMProstateSDGLib.methods.trainers.interactive import DECODER_RATE_FACTOR, InteractiveMethod
from SAMProstateSDGLib.modeling.interactive import ClickRefiner, InteractiveDecoder, InteractiveEngine, SliceClicks
from SAMProstateSDGLib.modeling.sam_engine import Prompt
from SAMProstateSDGLib.training.embedding_cache import CachedCase
from SAMProstateSDGLib.training.loop import TrainingOptions


@pytest.fixture(scope="module")
def decoder(sam_engine) -> InteractiveDecoder:
    """The shipped interactive decoder (catalog kind ``interactive-decoder``), loaded from its checksummed checkpoint."""
    from SAMProstateSDGLib.core.catalog import default_entry

    entry = default_entry(INTERACTIVE_KIND)
    return InteractiveDecoder.from_checkpoint(sam_engine.sam, entry.path, entry.sha256)


@pytest.fixture(scope="module")
def mid_slice(segmenter):
    """P158-020 (unseen site): the prepared volume, the slice with the most gland, its embedding and reference."""
    image = read_volume(FIXTURES / "P158-020.nii.gz")
    reference = read_mask(FIXTURES / "P158-020_seg.nii.gz")
    index = int(np.argmax(reference.sum(axis=(1, 2))))
    volume = segmenter.prepare(image)
    volume.encoded.encode([index])
    return volume, index, volume.encoded.embeddings[index], reference[index]


def test_the_engine_replays_clicks_in_order_and_reuses_what_it_decoded(sam_engine, decoder, mid_slice):
    """Points given all at once (a boxes file, a scene) decode as the same clicks placed one by one; a new click
    on a slice costs one decoder pass."""
    _, _, embedding, reference = mid_slice
    engine, refiner = InteractiveEngine(sam_engine, decoder), ClickRefiner(sam_engine, decoder)
    box = boxes_from_labels(reference[None])[0]
    clicks = (Click(box.x0 + 3, box.y0 + 3, False), Click((box.x0 + box.x1) / 2, (box.y0 + box.y1) / 2, True))
    step = refiner.refine(embedding, reference.shape, SliceClicks(box))
    for count in (1, 2):
        step = refiner.refine(embedding, reference.shape, SliceClicks(box, clicks[:count], step.logits))
    prompt = Prompt(box.as_tuple(), tuple((click.x, click.y) for click in clicks), tuple(click.label for click in clicks))
    mask, _ = engine.decode_scored(embedding, prompt, reference.shape)
    np.testing.assert_array_equal(mask, step.mask)
    passes = []
    engine.refiner.refine = lambda *arguments, original=engine.refiner.refine: passes.append(1) or original(*arguments)
    third = Click(box.x1 - 4, box.y1 - 4, False)
    engine.decode_scored(embedding, Prompt(prompt.box, (*prompt.points, (third.x, third.y)), (*prompt.point_labels, 0)), reference.shape)
    assert len(passes) == 1
    box_only, _ = engine.decode_scored(embedding, Prompt(box.as_tuple()), reference.shape)
    np.testing.assert_array_equal(box_only, refiner.refine(embedding, reference.shape, SliceClicks(box)).mask)


def test_every_click_gets_its_label_even_where_the_decoder_only_half_answers_it(sam_engine, decoder, mid_slice):
    """Three simulated clicks on the unseen slice: the clicked pixel always ends up on the side the click says, and at
    least once only because the slice's threshold moved past it (the decoder's own logits had it wrong)."""
    from SAMProstateSDGLib.masks.clicks import next_click

    _, _, embedding, reference = mid_slice
    refiner, box = ClickRefiner(sam_engine, decoder), boxes_from_labels(reference[None])[0]
    refined = refiner.refine(embedding, reference.shape, SliceClicks(box))
    state, decoder_wrong = SliceClicks(box, (), refined.logits), 0
    for _ in range(3):
        click = next_click(refined.mask, reference > 0)
        state = state.with_click(click)
        refined = refiner.refine(embedding, reference.shape, state)
        state = SliceClicks(box, state.clicks, refined.logits)
        row, column = int(click.y), int(click.x)
        assert refined.mask[row, column] == click.positive
        own = sam_engine.sam.postprocess_masks(refined.logits, sam_engine.input_size(reference.shape), reference.shape)[0, 0].numpy() > 0
        decoder_wrong += own[row, column] != click.positive
        assert (refined.mask <= own).all() or (refined.mask >= own).all()  # a level set of the same logits
    assert decoder_wrong >= 1


def test_a_click_on_a_slice_without_a_box_starts_from_the_coarse_region_under_it_or_the_nearest_box(data, segmenter, sam_engine, decoder):
    """The whole unseen P158-020 with its proposed boxes: the gland goes on for three slices past them. A click on the
    first, where the coarse network sees no region above 0.30 under it, segments it from the nearest box shrunk
    around the click, far closer to the reference than the lone click; a click on the last (700 pixels of gland),
    where it does, from that region's box, far closer than from the nearest box. Each slice keeps its box."""
    from SAMProstateSDGLib.io.dataset import find_cases
    from SAMProstateSDGLib.masks.boxes import borrowed_box, start_box
    from SAMProstateSDGLib.masks.clicks import next_click
    from SAMProstateSDGLib.masks.metrics import dice_score
    from SAMProstateSDGLib.pipeline.segmenter import BoxSegmentation

    image, reference = next(case for case in find_cases(data, split="unseen") if case.name == "P158-020").read()
    volume = segmenter.prepare(image)
    boxes = segmenter.propose_boxes(volume)
    probabilities, shape = segmenter.coarse_probabilities(volume), reference.shape[1:]
    first, last = max(boxes) + 1, int(np.flatnonzero(reference.any(axis=(1, 2))).max())
    assert last == first + 2, "the gland goes on for three slices past the proposed boxes"
    boxes = {max(boxes): boxes[max(boxes)]}  # the nearest box of both clicked slices: the only one encoded
    session = BoxSegmentation(volume, InteractiveEngine(sam_engine, decoder))
    session.update(boxes)
    for index in (first, last):
        click = next_click(session.labels[index] > 0, reference[index] > 0)
        assert click is not None and click.positive
        points = ((click.x, click.y),)
        borrowed = borrowed_box(boxes, index, points, (1,), shape)
        used = session.refine_slice(index, Prompt(None, points, (1,)))
        assert used == start_box(boxes, index, points, (1,), shape, probabilities[index], volume.spacing_xy) and session.boxes[index] == used
        dice = dice_score(session.labels[index] > 0, reference[index] > 0)
        if index == first:
            assert used == borrowed
            alone = ClickRefiner(sam_engine, decoder).refine(volume.encoded.embeddings[index], shape, SliceClicks(None, (click,))).mask
            assert dice > dice_score(alone, reference[index] > 0) + 0.05
        else:
            assert used != borrowed
            from_borrowed = BoxSegmentation(volume, InteractiveEngine(sam_engine, decoder))
            from_borrowed.refine_slice(index, Prompt(borrowed.as_tuple(), points, (1,)))
            assert dice > dice_score(from_borrowed.labels[index] > 0, reference[index] > 0) + 0.2


def test_a_training_step_trains_only_the_click_parts_of_a_copy(segmenter, mid_slice, tmp_path):
    """Only the click embeddings, the mask-prompt branch and the click decoder learn; the box embeddings and the mask
    decoder a box alone goes through stay, so a box alone decodes as LiteMedSAM does; a coarse box on a slice without
    gland is a sample too (clicked away)."""
    volume, index, embedding, reference = mid_slice
    labels = np.zeros((2, *reference.shape), dtype=np.uint8)
    labels[0] = reference
    coarse = np.zeros(labels.shape, dtype=np.float16)
    coarse[1, 40:80, 50:100] = 1.0  # the coarse network's false positive on the slice without gland
    case = CachedCase("P158-020", torch.stack([embedding, embedding]).half(), [], labels, coarse, volume.spacing_xy)
    method = InteractiveMethod(segmenter.sam)
    samples = method.samples([case])
    assert [(sample.slice, sample.coarse_box is None) for sample in samples] == [(0, True), (1, False)]
    false_positive_box = samples[1].coarse_box
    assert false_positive_box is not None and false_positive_box.x0 <= 50 and false_positive_box.x1 >= 99
    trainable = {name for name, parameter in method.module.named_parameters() if parameter.requires_grad}
    click_parts = (
        "prompt_encoder.point_embeddings.0.", "prompt_encoder.point_embeddings.1.", "prompt_encoder.not_a_point_embed.",
        "prompt_encoder.mask_downscaling.", "click_decoder.",
    )
    assert all(any(name.startswith(prefix) for name in trainable) for prefix in click_parts)
    assert all(name.startswith(click_parts) for name in trainable)
    mask_prompt = {f"mask_prompt.{name}" for name, _ in segmenter.sam.sam.prompt_encoder.mask_downscaling.named_parameters()}
    click_decoder = {f"click_decoder.{name}" for name in segmenter.sam.sam.mask_decoder.state_dict()}
    assert set(method.checkpoint_state()) == {"negative_click.weight", "positive_click.weight", "padding_point.weight"} | mask_prompt | click_decoder
    base = {name: value.clone() for name, value in segmenter.sam.sam.state_dict().items() if not name.startswith("image_encoder.")}
    before = {name: value.clone() for name, value in method.module.state_dict().items()}
    optimiser, _ = method.optimiser(TrainingOptions(tmp_path, learning_rate=1e-3), steps=1)
    decoder = list(method.module.click_decoder.parameters())
    prompt_parts = [parameter for parameter in method.trainable_parameters() if all(parameter is not other for other in decoder)]
    assert [group["lr"] for group in optimiser.param_groups] == [1e-3, 1e-3 * DECODER_RATE_FACTOR]
    for group, expected in zip(optimiser.param_groups, (prompt_parts, decoder)):  # the module's order: a resumed state maps back
        assert len(group["params"]) == len(expected) and all(a is b for a, b in zip(group["params"], expected))
    loss = method.loss([case], [samples[0]] * 4 + [samples[1]] * 2, random.Random(0))
    assert torch.isfinite(loss)
    loss.backward()
    optimiser.step()
    changed = {name for name, value in method.module.state_dict().items() if not torch.equal(value, before[name])}
    assert {"prompt_encoder.point_embeddings.0.weight", "prompt_encoder.point_embeddings.1.weight"} <= changed
    assert any(name.startswith("prompt_encoder.mask_downscaling.") for name in changed)
    assert any(name.startswith("click_decoder.") for name in changed)
    assert changed <= trainable
    assert all(torch.equal(value, base[name]) for name, value in segmenter.sam.sam.state_dict().items() if name in base)
    box = boxes_from_labels(reference[None])[0]
    np.testing.assert_array_equal(
        ClickRefiner(segmenter.sam, method.module).refine(embedding, reference.shape, SliceClicks(box)).mask,
        segmenter.sam.decode_scored(embedding, Prompt(box.as_tuple()), reference.shape)[0],
    )


def test_points_in_a_boxes_file_are_refused_with_a_box_only_decoder(tmp_path, capsys):
    """LiteMedSAM (and SAMMed) were trained with boxes only: a boxes file with clicks is refused before any model loads."""
    image_path = FIXTURES / "P158-020.nii.gz"
    image, reference = read_volume(image_path), read_mask(FIXTURES / "P158-020_seg.nii.gz")
    boxes = boxes_from_labels(reference)
    index = min(boxes)
    prompts = tmp_path / "prompts.json"
    write_boxes(prompts, boxes, image, points={index: (Click(120.0, 120.0, True),)})
    assert read_prompts(prompts, image)[1] == {index: (Click(120.0, 120.0, True),)}
    output = tmp_path / "seg.nii.gz"
    for method in ("zero-shot", "sammed"):
        assert main(["segment", str(image_path), "-o", str(output), "--boxes-in", str(prompts), "--method", method]) == 2
        error = capsys.readouterr().err
        assert error.startswith("samprostate: error:") and "trained with boxes only" in error and error.count("\n") == 1
    assert not output.exists()



def test_the_simulated_user_session_gives_a_mask_per_click(sam_engine, decoder, mid_slice):
    """Box edits (today's LiteMedSAM behaviour) and points both give the start mask plus one per click; a click that
    lands in the missed region and changes the slice's mask."""
    from SAMProstateSDGLib.apps.click_evaluation import box_edit_step, interactive_step
    from SAMProstateSDGLib.masks.boxes import Box
    from SAMProstateSDGLib.masks.clicks import next_click
    from SAMProstateSDGLib.masks.metrics import dice_score
    from SAMProstateSDGLib.modeling.interactive import simulate_clicks

    _, _, embedding, reference = mid_slice
    box = boxes_from_labels(reference[None])[0]
    start = SliceClicks(Box(box.x0 + 20, box.y0, box.x1, box.y1))  # the box misses the gland's left part
    edits = simulate_clicks(box_edit_step(sam_engine, embedding, reference.shape), reference, start, 2)
    points = simulate_clicks(interactive_step(ClickRefiner(sam_engine, decoder), embedding, reference.shape), reference, start, 2)
    assert len(edits) == len(points) == 3
    first = next_click(edits[0], reference)
    assert first.positive and first.x < start.box.x0  # the simulated user clicks in the missed left part
    assert (edits[1] != edits[0]).any() and (points[1] != points[0]).any()  # and both decoders answer the click
    np.testing.assert_array_equal(points[0], edits[0])  # a box alone decodes as LiteMedSAM: the trained parts are not used
    assert dice_score(points[2], reference) > dice_score(points[0], reference) + 0.02  # the clicks add the missed part


def test_segment_with_the_interactive_method_keeps_the_automatic_result_and_takes_clicks_as_points(tmp_path):
    """``segment --method interactive`` (the shipped decoder) writes the default's labels when there are no clicks; a
    boxes file with the simulated user's click on one slice changes that slice only, towards the reference."""
    from SAMProstateSDGLib.masks.clicks import next_click
    from SAMProstateSDGLib.masks.metrics import dice_score

    image_path = FIXTURES / "P158-020.nii.gz"
    image, reference = read_volume(image_path), read_mask(FIXTURES / "P158-020_seg.nii.gz")
    default, automatic, clicked = (tmp_path / f"{name}.nii.gz" for name in ("default", "automatic", "clicked"))
    common = ["--device", "cpu", "--backend", "torch", "--precision", "fp32"]
    assert main(["segment", str(image_path), "-o", str(default), "--boxes-out", str(tmp_path / "boxes.json"), *common]) == 0
    assert main(["segment", str(image_path), "-o", str(automatic), "--method", "interactive", *common]) == 0
    np.testing.assert_array_equal(read_mask(automatic), read_mask(default))

    labels = read_mask(automatic)
    boxes, _ = read_prompts(tmp_path / "boxes.json", image)
    index = max(boxes, key=lambda key: reference[key].sum())
    click = next_click(labels[index], reference[index])
    assert click is not None
    write_boxes(tmp_path / "clicked.json", boxes, image, points={index: (click,)})
    assert main(["segment", str(image_path), "-o", str(clicked), "--method", "interactive", "--boxes-in", str(tmp_path / "clicked.json"), *common]) == 0
    after = read_mask(clicked)
    assert [int(changed) for changed in np.flatnonzero((after != labels).any(axis=(1, 2)))] == [index]
    assert dice_score(after[index], reference[index]) > dice_score(labels[index], reference[index])


def test_a_clicked_slice_without_a_box_keeps_its_start_box_in_the_boxes_written(tmp_path):
    """``--boxes-out`` saves the boxes used: a slice clicked without a box is decoded from its start box, so that box is
    written (it was left out), and the slice is not listed among the unsegmented slices to check."""
    image_path = FIXTURES / "P158-020.nii.gz"
    image, reference = read_volume(image_path), read_mask(FIXTURES / "P158-020_seg.nii.gz")
    index = int(np.argmax(reference.reshape(len(reference), -1).sum(axis=1)))
    rows, columns = np.nonzero(reference[index])
    click = Click(float(np.median(columns)), float(np.median(rows)), True)
    others = {other: box for other, box in boxes_from_labels(reference).items() if other != index}
    write_boxes(tmp_path / "click.json", others, image, points={index: (click,)})
    arguments = ["segment", str(image_path), "-o", str(tmp_path / "seg.nii.gz"), "--method", "interactive", "--boxes-in",
                 str(tmp_path / "click.json"), "--boxes-out", str(tmp_path / "used.json"), "--device", "cpu", "--backend", "torch", "--precision", "fp32"]
    assert main(arguments) == 0
    boxes, points = read_prompts(tmp_path / "used.json", image)
    assert sorted(boxes) == sorted([*others, index]) and list(points) == [index]
    assert boxes[index].x0 <= click.x <= boxes[index].x1 and boxes[index].y0 <= click.y <= boxes[index].y1
    written = json.loads((tmp_path / "used.json").read_text())
    assert index not in [entry["slice"] for entry in written["slices_to_check_without_box"]]


def test_points_in_a_boxes_file_reach_a_point_capable_sams_decoder_as_points(tmp_path, monkeypatch):
    """A user's SAM ViT (``--sam-checkpoint`` with ``--sam-type vit_b``: not box-only) gets a boxes file's clicks as points:
    SAM's prompt encoder receives them at the slice's pixel coordinates scaled to the 1024 px input, with their labels
    and no box, and the written slice is the mask of a direct ``prompt_encoder`` + ``mask_decoder`` call on that slice's
    embedding with the same prompt. No ViT-B weights are available offline, so the checkpoint is a ViT-B with seeded
    random weights: this checks the plumbing from the JSON to the decoder and back to the label file, not accuracy."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder

    from SAMProstateSDGLib.modeling.sam_engine import SAM_BUILDERS

    image_path = FIXTURES / "P158-020.nii.gz"
    image = read_volume(image_path)
    columns, rows, slices = image.GetSize()
    index = 2
    torch.manual_seed(0)
    sam = SAM_BUILDERS["vit_b"]().eval()
    checkpoint = tmp_path / "sam_vit_b.pth"
    torch.save(sam.state_dict(), checkpoint)
    prompts = tmp_path / "prompts.json"
    write_boxes(prompts, {}, image, points={index: (Click(140.0, 125.0, True), Click(60.0, 200.0, False))})

    seen: dict[str, list] = {"prompts": [], "embeddings": []}
    encode_prompts, decode_masks = PromptEncoder.forward, MaskDecoder.forward

    def record_prompts(self, points, boxes, masks):
        seen["prompts"].append((points, boxes, masks))
        return encode_prompts(self, points, boxes, masks)

    def record_embedding(self, image_embeddings, **prompt):
        seen["embeddings"].append(image_embeddings.clone())
        return decode_masks(self, image_embeddings, **prompt)

    monkeypatch.setattr(PromptEncoder, "forward", record_prompts)
    monkeypatch.setattr(MaskDecoder, "forward", record_embedding)
    output = tmp_path / "seg.nii.gz"
    arguments = ["segment", str(image_path), "-o", str(output), "--boxes-in", str(prompts), "--sam-checkpoint", str(checkpoint),
                 "--sam-type", "vit_b", "--backend", "torch", "--precision", "fp32", "--device", "cpu"]
    assert main(arguments) == 0
    monkeypatch.undo()

    assert len(seen["prompts"]) == len(seen["embeddings"]) == 1  # one slice has an entry: one decoder call
    (coordinates, labels), boxes, masks = seen["prompts"][0]
    assert boxes is None and masks is None
    scale = 1024 / max(rows, columns)  # SAM's input: the longer side resized to 1024 px
    resized = (int(rows * scale + 0.5), int(columns * scale + 0.5))
    expected = torch.tensor([[[140.0 * resized[1] / columns, 125.0 * resized[0] / rows], [60.0 * resized[1] / columns, 200.0 * resized[0] / rows]]])
    torch.testing.assert_close(coordinates.cpu(), expected)
    assert labels.tolist() == [[1, 0]]

    with torch.inference_mode():
        sparse, dense = sam.prompt_encoder(points=(expected, torch.tensor([[1, 0]])), boxes=None, masks=None)
        low_resolution, _ = sam.mask_decoder(image_embeddings=seen["embeddings"][0], image_pe=sam.prompt_encoder.get_dense_pe(),
                                             sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False)
        direct = (sam.postprocess_masks(low_resolution, resized, (rows, columns))[0, 0] > sam.mask_threshold).numpy()
    written = read_mask(output)
    assert written.shape == (slices, rows, columns)
    assert 0 < direct.sum() < direct.size  # a mask with an edge: the comparison below can fail
    np.testing.assert_array_equal(written[index] > 0, direct)
    assert not np.delete(written, index, axis=0).any()  # slices without an entry are not segmented
