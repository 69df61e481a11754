"""The overlay PNG's content: the outline and the boxes drawn where the labels and the boxes are."""

import numpy as np
from PIL import Image

from SAMProstateSDGLib.io.overlay import BOX, OUTLINE, overlay_sheet
from SAMProstateSDGLib.masks.boxes import Box

WHITE_TEXT = (slice(0, 16), slice(0, 50))  # "slice N" is written in each tile's top left corner


def colour(picture: Image.Image, rgb: tuple[int, int, int]) -> np.ndarray:
    return (np.asarray(picture) == rgb).all(axis=2)


def test_outline_and_boxes_are_drawn_on_the_slices_that_have_them():
    normalised = np.full((4, 40, 50), 0.5, np.float32)  # grey 127 everywhere
    labels = np.zeros((4, 40, 50), np.uint8)
    labels[1, 20:30, 20:30] = 1  # slice 1: a 10 x 10 square with a box around it
    boxes = {1: Box(17, 18, 33, 32), 2: Box(5, 25, 45, 35)}  # slice 2: a box only; slices 0 and 3: nothing, not shown
    sheet = overlay_sheet(normalised, labels, boxes)
    assert sheet.size == (2 * 50, 40)  # two tiles side by side

    outline = np.zeros((40, 100), bool)
    outline[20:30, 20:30] = True
    outline[21:29, 21:29] = False  # the square's one-pixel edge, in the first tile
    assert np.array_equal(colour(sheet, OUTLINE), outline)

    frames = np.zeros((40, 100), bool)
    for x_offset, (x0, y0, x1, y1) in ((0, (17, 18, 33, 32)), (50, (5, 25, 45, 35))):
        frames[y0 : y1 + 1, x_offset + x0 : x_offset + x1 + 1] = True
        frames[y0 + 1 : y1, x_offset + x0 + 1 : x_offset + x1] = False
    assert np.array_equal(colour(sheet, BOX), frames)

    rest = ~outline & ~frames
    rest[WHITE_TEXT] = False
    rest[:, 50:][WHITE_TEXT] = False
    assert (np.asarray(sheet)[rest] == 127).all()  # the image itself, untouched


def test_an_empty_result_shows_the_middle_slice_plain():
    normalised = np.linspace(0, 1, 4 * 40 * 50, dtype=np.float32).reshape(4, 40, 50)
    sheet = np.asarray(overlay_sheet(normalised, np.zeros((4, 40, 50), np.uint8), {}))
    assert sheet.shape == (40, 50, 3)
    grey = (normalised[2] * 255).astype(np.uint8)
    assert (sheet[20:, :, 0] == grey[20:]).all() and (sheet[..., 0] == sheet[..., 2]).all()
