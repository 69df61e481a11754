import numpy as np
import pytest

from conftest import FIXTURES, dice, read_mask
from SAMProstateSDGLib.io.volume_io import normalised_array, read_volume
from SAMProstateSDGLib.masks.boxes import boxes_from_labels
from SAMProstateSDGLib.modeling.sam_engine import Prompt
from SAMProstateSDGLib.modeling.tiling import TILES, TiledEncodedVolume, merge_slices, shift_prompt, tile_offset


def test_off_diagonal_tiles_shift_by_width_then_height_on_non_square_slices():
    slices = normalised_array(read_volume(FIXTURES / "Case00.nii.gz"))[:, :200, :240]  # H=200, W=240
    merged = merge_slices(slices)
    assert merged.shape == (400, 480)
    assert tile_offset(1, 200, 240) == (240, 0)  # row 0, column 1: x + W
    assert tile_offset(2, 200, 240) == (0, 200)  # row 1, column 0: y + H
    for tile in range(TILES):
        x, y = tile_offset(tile, 200, 240)
        assert (merged[y : y + 200, x : x + 240] == slices[tile]).all()
    shifted = shift_prompt(Prompt(box=(10, 20, 30, 40), points=((15, 25),), point_labels=(1,)), 1, 200, 240)
    assert shifted.box == (250, 20, 270, 40) and shifted.points == ((255, 25),)


def test_a_box_in_each_tile_segments_its_own_slice(sam_engine):
    image = read_volume(FIXTURES / "Case29.nii.gz")
    reference = read_mask(FIXTURES / "Case29_seg.nii.gz")
    volume = TiledEncodedVolume(sam_engine, normalised_array(image))
    height, width = reference.shape[1:]
    boxes = boxes_from_labels(reference)
    assert len(boxes) == TILES
    volume.encode(boxes)
    assert list(volume.embeddings) == [0]  # four slices, one encoder pass
    for index, box in boxes.items():
        merged, merged_score = sam_engine.decode_scored(
            volume.embeddings[0], shift_prompt(Prompt(box=box.as_tuple()), index, height, width), (2 * height, 2 * width)
        )
        x, y = tile_offset(index, height, width)
        inside = merged[y : y + height, x : x + width]
        assert inside.sum() > 0.95 * merged.sum()
        assert dice(inside, reference[index]) > 0.4  # each slice is at half resolution in the merged input
        logits, score = volume.segment_logits(index, Prompt(box=box.as_tuple()))
        mask = logits > sam_engine.sam.mask_threshold
        assert (mask == inside).all() and score == merged_score  # and SAM's predicted IoU of it


def test_more_than_four_slices_do_not_merge():
    with pytest.raises(ValueError):
        merge_slices(np.zeros((5, 8, 8)))
