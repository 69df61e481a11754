"""The point-trained interactive decoder on real fixture slices: clicks as points, the previous mask fed back,
the click simulation driving it, its training step, and the CLI's points."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from conftest import FIXTURES, read_mask
from SAMProstateSDGLib.apps.cli import main
from SAMProstateSDGLib.core.checksums import half_precision
from SAMProstateSDGLib.io.boxes_json import read_prompts, write_boxes
from SAMProstateSDGLib.io.volume_io import read_volume
from SAMProstateSDGLib.masks.boxes import boxes_from_labels
from SAMProstateSDGLib.masks.clicks import Click
from SAMProstateSDGLib.methods.trainers.interactive import GlandSlice, InteractiveMethod
from SAMProstateSDGLib.modeling.interactive import ClickRefiner, InteractiveDecoder, InteractiveEngine, SliceClicks
from SAMProstateSDGLib.modeling.sam_engine import Prompt
from SAMProstateSDGLib.training.embedding_cache import CachedCase


@pytest.fixture(scope="module")
def decoder(sam_engine, tmp_path_factory) -> InteractiveDecoder:
    """LiteMedSAM's own prompt encoder and mask decoder as an interactive decoder, through a checkpoint written as training
    writes it (no trained interactive decoder is shipped: README, Click to segment)."""
    checkpoint = tmp_path_factory.mktemp("interactive") / "interactive.pt"
    torch.save(half_precision(InteractiveDecoder(sam_engine.sam).state_dict()), checkpoint)
    return InteractiveDecoder.from_checkpoint(sam_engine.sam, checkpoint)


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


def test_a_training_step_trains_the_copy_and_leaves_the_base_sam_alone(segmenter, mid_slice):
    volume, index, embedding, reference = mid_slice
    labels = np.zeros((1, *reference.shape), dtype=np.uint8)
    labels[0] = reference
    case = CachedCase("P158-020", embedding[None].half(), [], labels, np.zeros((1, *reference.shape), np.float16), volume.spacing_xy)
    method = InteractiveMethod(segmenter.sam)
    assert method.samples([case]) == [GlandSlice(0, 0, None)]  # a gland slice without a coarse box
    base = {name: value.clone() for name, value in segmenter.sam.sam.prompt_encoder.state_dict().items()}
    before = {name: value.clone() for name, value in method.module.state_dict().items()}
    optimiser = torch.optim.Adam(method.trainable_parameters(), lr=1e-3)
    loss = method.loss([case], [GlandSlice(0, 0, None)] * 2, random.Random(0))
    assert torch.isfinite(loss)
    loss.backward()
    assert method.module.mask_decoder.output_hypernetworks_mlps[0].layers[0].weight.grad.abs().sum() > 0
    optimiser.step()
    changed = [name for name, value in method.module.state_dict().items() if not torch.equal(value, before[name])]
    assert any(name.startswith("mask_decoder.") for name in changed)
    assert all(torch.equal(value, base[name]) for name, value in segmenter.sam.sam.prompt_encoder.state_dict().items())


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
