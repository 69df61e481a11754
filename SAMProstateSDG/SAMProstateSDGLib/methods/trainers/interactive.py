"""Interactive decoder training: SAM's prompt encoder and a copy of its mask decoder learn clicks and the fed-back mask.

What learns is ``InteractiveDecoder.trained_parts`` (all a checkpoint holds): the prompt
encoder's click embeddings (positive, negative, padding), its mask-prompt branch, and the click
decoder, a copy of the mask decoder that decodes every prompt with a click or a fed-back mask
(at a tenth of the learning rate). A box alone still goes through LiteMedSAM's own mask decoder
and box embeddings, so the automatic result (0 clicks) is exactly the default model's. A single
fine-tuned decoder for both lost that: its automatic result fell from 0.841 to 0.730 on the
unseen cases (README, *History*).

Each sample is one slice of a cached source-site case with gland or a coarse box (a box on a
slice without gland is a false positive a user would click away). It starts from a prompt drawn
at random (the coarse network's box jittered, the reference's box jittered, or a single click at
the centre of the gland; a slice without gland always starts from its coarse box), then runs 1
to ``MAX_CLICK_ROUNDS`` rounds (0 to 3 after a single click; drawn per sample) in which the next
click is the simulated user's (``masks.clicks.next_click`` on the previous prediction) and the
previous low-resolution logits are fed back as the mask prompt, as SAM and its interactive successors
train. The last round's prediction is scored (Dice + CE, plus the squared error of the predicted
IoU); the earlier rounds run without gradients (they only place the clicks and the fed-back mask),
which keeps a sample at about one backward pass on a CPU.

Validation: whole-gland Dice of the validation cases after ``VALIDATION_CLICKS`` simulated clicks
on every slice with gland or a coarse box, starting from the coarse boxes (what the click
evaluation measures).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from ...core.checksums import load_state_strictly
from ...masks.boxes import Box, ProposalOptions, boxes_from_labels, propose_boxes
from ...masks.clicks import Click, next_click
from ...modeling.interactive import ClickRefiner, InteractiveDecoder, SliceClicks, simulate_clicks
from ...modeling.sam_engine import SamEngine
from ...training.embedding_cache import CachedCase
from ...training.loop import FineTuningMethod, TrainingOptions
from .sammed import jitter, low_resolution_target

MAX_CLICK_ROUNDS = 3  # clicks added after the start prompt, drawn per sample
START_PROMPTS = {"coarse box": 0.5, "reference box": 0.3, "one click": 0.2}  # how a sample starts (probabilities)
VALIDATION_CLICKS = 3
IOU_LOSS_WEIGHT = 1.0
DECODER_RATE_FACTOR = 0.1  # the click decoder's learning rate over the prompt parts'


@dataclass(frozen=True)
class PromptedSlice:
    """A training slice: one with gland in the reference or a coarse box (or both)."""

    case: int
    slice: int
    coarse_box: Box | None


class InteractiveMethod(FineTuningMethod):
    """The click embeddings, the mask-prompt branch and the click decoder learn (in a copy: the base SAM is left alone)."""

    cached_features = ("embeddings", "coarse")
    module: InteractiveDecoder

    def __init__(self, engine: SamEngine, proposal: ProposalOptions = ProposalOptions()):
        self.engine = engine
        self.proposal = proposal
        self.module = InteractiveDecoder(engine.sam).to(engine.device)
        self.module.requires_grad_(False)
        self.module.trained_parts().requires_grad_(True)
        self.refiner = ClickRefiner(engine, self.module)
        self.loss_function = DiceCELoss(sigmoid=True)

    def optimiser(self, options: TrainingOptions, steps: int) -> tuple[torch.optim.Optimizer, None]:
        """The prompt parts at the method's rate; the click decoder, which starts from a trained decoder, at a tenth of it."""
        decoder = list(self.module.click_decoder.parameters())  # in the module's order: a resumed optimiser state maps back
        in_decoder = {id(parameter) for parameter in decoder}
        groups = [
            {"params": [parameter for parameter in self.trainable_parameters() if id(parameter) not in in_decoder], "lr": options.learning_rate},
            {"params": decoder, "lr": options.learning_rate * DECODER_RATE_FACTOR},
        ]
        return torch.optim.Adam(groups), None

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        return self.module.trained_parts().state_dict()

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        load_state_strictly(self.module.trained_parts(), state, "interactive training state")

    def boxes(self, case: CachedCase) -> dict[int, Box]:
        return propose_boxes(case.coarse.astype(np.float32), case.spacing_xy, self.proposal)

    def samples(self, cases: list[CachedCase]) -> list[PromptedSlice]:
        samples = []
        for number, case in enumerate(cases):
            boxes = self.boxes(case)
            gland = {int(index) for index in np.flatnonzero((case.labels > 0).any(axis=(1, 2)))}
            samples += [PromptedSlice(number, index, boxes.get(index)) for index in sorted(gland | boxes.keys())]
        return samples

    def loss(self, cases: list[CachedCase], batch: list[PromptedSlice], generator: random.Random) -> torch.Tensor:
        return torch.stack([self.sample_loss(cases[sample.case], sample, generator) for sample in batch]).mean()

    def sample_loss(self, case: CachedCase, sample: PromptedSlice, generator: random.Random) -> torch.Tensor:
        """The loss of the last round of one sample's simulated interaction (0 to ``MAX_CLICK_ROUNDS`` clicks)."""
        shape = case.labels.shape[1:]
        reference_slice = case.labels[sample.slice] > 0
        target = low_resolution_target(self.engine, reference_slice, 4 * self.engine.sam.prompt_encoder.image_embedding_size[0])
        scale = self.engine.sam.image_encoder.img_size / target.shape[-1]  # input-frame pixels per low-resolution pixel
        rows, columns = (int(round(side / scale)) for side in self.engine.input_size(shape))
        reference = target[0, 0, :rows, :columns].cpu().numpy() > 0.5  # the reference on the low-resolution grid, without padding
        embedding = case.embeddings[sample.slice][None].to(self.engine.device).float()

        start = generator.choices(list(START_PROMPTS), weights=list(START_PROMPTS.values()))[0]
        if not reference_slice.any():  # a false-positive box: the user starts from it and clicks the gland away
            start = "coarse box"
        elif start == "coarse box" and sample.coarse_box is None:
            start = "reference box"
        box, clicks = None, []
        if start == "one click":
            clicks = [click for click in (next_click(np.zeros_like(reference), reference),) if click is not None]
        else:
            chosen = sample.coarse_box if start == "coarse box" else boxes_from_labels(reference_slice[None])[0]
            assert chosen is not None  # "coarse box" only starts a sample that has one
            box = self.engine.transform.apply_boxes_torch(
                torch.tensor([jitter(chosen, shape, generator).as_tuple()], dtype=torch.float32, device=self.engine.device), shape
            )
        # a box alone decodes with frozen parts only: such a start gets at least one round (a click or the fed-back mask)
        previous, rounds = None, generator.randint(0 if clicks else 1, MAX_CLICK_ROUNDS)
        with torch.no_grad():  # the rounds before the last one only place the clicks and the fed-back mask
            for _ in range(rounds):
                logits, _ = self.module(embedding, box, self._points(clicks, scale), previous)
                previous = logits
                click = next_click(logits[0, 0, :rows, :columns].cpu().numpy() > 0, reference)
                if click is None:
                    break
                clicks.append(click)
        logits, predicted_iou = self.module(embedding, box, self._points(clicks, scale), previous)
        prediction = logits[0, 0, :rows, :columns].detach().cpu().numpy() > 0
        iou = (prediction & reference).sum() / max((prediction | reference).sum(), 1)
        return self.loss_function(logits, target) + IOU_LOSS_WEIGHT * F.mse_loss(predicted_iou[0, 0], torch.tensor(float(iou), device=logits.device))

    def _points(self, clicks: list[Click], scale: float) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Clicks on the low-resolution grid as prompt-encoder points in the encoder's input frame (pixel centres)."""
        if not clicks:
            return None
        device = self.engine.device
        coordinates = torch.tensor([[(click.x * scale + (scale - 1) / 2, click.y * scale + (scale - 1) / 2) for click in clicks]], device=device)
        return coordinates, torch.tensor([[click.label for click in clicks]], dtype=torch.int, device=device)

    def segment_case(self, case: CachedCase) -> np.ndarray:
        """Labels after ``VALIDATION_CLICKS`` simulated clicks on each slice with gland or a box, starting from the coarse boxes."""
        labels = np.zeros(case.labels.shape, dtype=np.uint8)
        shape = case.labels.shape[1:]
        boxes = self.boxes(case)
        gland = {int(index) for index in np.flatnonzero((case.labels > 0).any(axis=(1, 2)))}
        for index in sorted(gland | boxes.keys()):
            embedding = case.embeddings[index].to(self.engine.device)
            masks = simulate_clicks(
                partial(self.refiner.refine, embedding, shape),
                case.labels[index] > 0,
                SliceClicks(boxes.get(index)),
                VALIDATION_CLICKS,
            )
            labels[index] = masks[-1]
        return labels
