"""Click-to-segment with a point-trained decoder: one slice re-decoded from its box, all its clicks
and its previous low-resolution mask (SAM's interactive loop; the cached embedding is reused).

``InteractiveDecoder`` holds copies of SAM's prompt encoder and mask decoder, whose click and
mask-prompt parts were trained with clicks, and a click decoder trained with them
(``methods.trainers.interactive``); the image encoder stays the base model's. ``ClickRefiner`` is the
inference step (used by the click evaluation); ``InteractiveEngine`` is a SamEngine built on it,
so ``BoxSegmentation.refine_slice`` (the Slicer module) and ``segment --boxes-in`` with points
decode clicks as points, with the previous mask fed back.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from segment_anything.modeling import Sam
from torch import nn

from ..core.checksums import load_trained_weights
from ..masks.boxes import Box
from ..masks.clicks import Click, click_threshold, next_click
from .sam_engine import Prompt, SamEngine


class InteractiveDecoder(nn.Module):
    """SAM's prompt encoder and two copies of its mask decoder, copied from ``sam`` (so training leaves the base model alone).

    A box alone decodes with ``mask_decoder``, the base model's, in full precision: exactly as the base
    SAM does (the automatic result). A prompt with clicks or a fed-back mask decodes with
    ``click_decoder``. Training teaches only ``trained_parts`` (the click embeddings, the mask-prompt
    branch and the click decoder), and a checkpoint holds only those.
    """

    def __init__(self, sam: Sam):
        super().__init__()
        self.prompt_encoder = copy.deepcopy(sam.prompt_encoder)
        self.mask_decoder = copy.deepcopy(sam.mask_decoder)
        self.click_decoder = copy.deepcopy(sam.mask_decoder)

    def trained_parts(self) -> nn.ModuleDict:
        """The prompt encoder's modules that clicks and the fed-back mask go through (not those of a box alone)."""
        encoder = self.prompt_encoder
        return nn.ModuleDict(
            {
                "negative_click": encoder.point_embeddings[0],
                "positive_click": encoder.point_embeddings[1],
                "padding_point": encoder.not_a_point_embed,  # after clicks without a box
                "mask_prompt": encoder.mask_downscaling,  # the previous low-resolution logits
                "click_decoder": self.click_decoder,
            }
        )

    def forward(
        self, embedding: torch.Tensor, boxes: torch.Tensor | None, points: tuple[torch.Tensor, torch.Tensor] | None, previous: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-resolution logits [1, 1, 4·64, 4·64] and the predicted IoU [1, 1] for one slice.

        ``embedding`` [1, 256, 64, 64]; ``boxes`` [1, 4] and ``points`` ([1, N, 2], [1, N]) in the
        encoder's input frame; ``previous``: the last low-resolution logits of this slice, or None.
        """
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=previous)
        decoder = self.mask_decoder if points is None and previous is None else self.click_decoder
        return decoder(
            image_embeddings=embedding,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )

    @classmethod
    def from_checkpoint(cls, sam: Sam, checkpoint: str | Path, sha256: str | None = None) -> InteractiveDecoder:
        decoder = cls(sam)
        load_trained_weights(decoder.trained_parts(), checkpoint, "interactive decoder", sha256)
        return decoder.eval()


@dataclass(frozen=True)
class SliceClicks:
    """What a slice is decoded from: its box (if any), every click on it in order, and its last low-resolution logits."""

    box: Box | None = None
    clicks: tuple[Click, ...] = ()
    previous: torch.Tensor | None = None

    def with_click(self, click: Click) -> SliceClicks:
        return SliceClicks(self.box, (*self.clicks, click), self.previous)


@dataclass(frozen=True)
class Refined:
    mask: np.ndarray  # bool [rows, columns]
    logits: torch.Tensor | None  # low-resolution logits [1, 1, 256, 256], fed back with the next click (None: a box-only SAM)
    predicted_iou: float


class ClickRefiner:
    """Decoder-only updates of one encoded slice with the interactive decoder (an embedding costs nothing here)."""

    def __init__(self, engine: SamEngine, decoder: InteractiveDecoder):
        self.engine = engine
        self.decoder = decoder.to(engine.device).eval()

    @torch.inference_mode()
    def refine(self, embedding: torch.Tensor, slice_shape: tuple[int, int], state: SliceClicks) -> Refined:
        """The slice's mask from ``state`` (a box, clicks, or both), thresholded so that every click's pixel has
        its label (``click_threshold``); the decoder's own logits are what the next click feeds back."""
        if state.box is None and not state.clicks:
            raise ValueError("a slice needs a box or a click to be segmented")
        device, transform = self.engine.device, self.engine.transform
        boxes = points = None
        if state.box is not None:
            boxes = transform.apply_boxes_torch(torch.tensor([state.box.as_tuple()], dtype=torch.float32, device=device), slice_shape)
        if state.clicks:
            coordinates = torch.tensor([[(click.x, click.y) for click in state.clicks]], dtype=torch.float32, device=device)
            labels = torch.tensor([[click.label for click in state.clicks]], dtype=torch.int, device=device)
            points = (transform.apply_coords_torch(coordinates, slice_shape), labels)
        logits, iou = self.decoder(embedding.float()[None].to(device), boxes, points, state.previous)
        upsampled = self.engine.sam.postprocess_masks(logits, self.engine.input_size(slice_shape), slice_shape)[0, 0].cpu().numpy()
        threshold = click_threshold(upsampled, state.clicks, self.engine.sam.mask_threshold)
        return Refined(upsampled > threshold, logits, float(iou[0, 0]))


RefineStep = Callable[[SliceClicks], Refined]  # one decoder update of a slice from its box, clicks and previous mask


def simulate_clicks(
    step: RefineStep,
    reference: np.ndarray,
    start: SliceClicks,
    clicks: int,
    first_click_box: Callable[[Click], Box | None] | None = None,
    shown: np.ndarray | None = None,
) -> list[np.ndarray]:
    """A simulated user's session on one slice: its masks after 0, 1, …, ``clicks`` clicks.

    The start (0 clicks) is ``shown`` (the mask the user sees: the automatic result's slice, smoothed with its
    neighbours) or else ``step(start)``, or an empty mask when ``start`` has neither a box nor a click; each click
    is ``next_click`` on the current mask, added to all earlier ones, with the last logits fed back (the first
    click's: ``step(start)``'s). On an empty start, ``first_click_box`` may give the first click a box to
    start from (decoded first, as the engine replays a slice). Once the mask equals the reference, it stays.
    """
    state, mask = start, np.zeros(reference.shape, dtype=bool)
    if start.box is not None or start.clicks:
        refined = step(start)
        state, mask = replace(start, previous=refined.logits), refined.mask
    if shown is not None:
        mask = shown
    masks = [mask]
    for _ in range(clicks):
        click = next_click(mask, reference)
        if click is not None:
            box = first_click_box(click) if first_click_box is not None and state.box is None and not state.clicks else None
            if box is not None:
                state = replace(state, box=box, previous=step(SliceClicks(box)).logits)
            state = state.with_click(click)
            refined = step(state)
            state, mask = replace(state, previous=refined.logits), refined.mask
        masks.append(mask)
    return masks


class InteractiveEngine(SamEngine):
    """A SAM engine whose prompt encoder and mask decoder are the interactive decoder's (the image encoder is
    shared with ``engine``). A box alone decodes as in any engine (the 0-click result); a prompt with points
    is replayed click by click with the previous mask fed back (``refined``), and the logits of each prefix of
    clicks are kept, so the next click on a slice costs one decoder pass."""

    CACHED_PREFIXES = 256

    def __init__(self, engine: SamEngine, decoder: InteractiveDecoder):
        sam = Sam(
            image_encoder=engine.sam.image_encoder,
            prompt_encoder=decoder.prompt_encoder,
            mask_decoder=decoder.mask_decoder,
            pixel_mean=engine.sam.pixel_mean.flatten().tolist(),
            pixel_std=engine.sam.pixel_std.flatten().tolist(),
        )
        super().__init__(sam, engine.device, engine.batch_size, box_only=False, fast_encoder=False, encoder_backend=engine.encoder_backend)
        self.refiner = ClickRefiner(self, decoder)
        self._logits: OrderedDict[tuple, Refined] = OrderedDict()  # (embedding, shape, box, clicks) -> the decoder's answer

    def decode_scored(self, embedding: torch.Tensor, prompt: Prompt, slice_shape: tuple[int, int]) -> tuple[np.ndarray, float]:
        if not prompt.points:
            return super().decode_scored(embedding, prompt, slice_shape)
        box = None if prompt.box is None else Box(*prompt.box)
        clicks = tuple(Click(float(x), float(y), label == 1) for (x, y), label in zip(prompt.points, prompt.point_labels))
        refined = self.refined(embedding, slice_shape, box, clicks)
        return refined.mask, refined.predicted_iou

    def refined(self, embedding: torch.Tensor, slice_shape: tuple[int, int], box: Box | None, clicks: tuple[Click, ...]) -> Refined:
        """The slice after ``clicks`` (in the order placed) on ``box``; the longest cached prefix is reused."""
        key = (embedding.data_ptr(), tuple(slice_shape), box)
        done = next((count for count in range(len(clicks), -1, -1) if (*key, clicks[:count]) in self._logits), None)
        if done is None:
            if box is None:
                done, refined = 1, self.refiner.refine(embedding, slice_shape, SliceClicks(None, clicks[:1]))
            else:
                done, refined = 0, self.refiner.refine(embedding, slice_shape, SliceClicks(box))
            self._remember((*key, clicks[:done]), refined)
        refined = self._logits[(*key, clicks[:done])]
        for count in range(done + 1, len(clicks) + 1):
            refined = self.refiner.refine(embedding, slice_shape, SliceClicks(box, clicks[:count], refined.logits))
            self._remember((*key, clicks[:count]), refined)
        return refined

    def _remember(self, key: tuple, refined: Refined) -> None:
        self._logits[key] = refined
        self._logits.move_to_end(key)
        while len(self._logits) > self.CACHED_PREFIXES:
            self._logits.popitem(last=False)
