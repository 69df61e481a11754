"""Fine-tuning SAM's mask decoder on cached source-site embeddings (SAMMed).

Only the mask decoder learns; the image encoder never runs (its embeddings come from the
cache) and the prompt encoder stays frozen. Prompts are the coarse network's filtered boxes,
jittered during training only. The loop is shared by the methods of ``samprostate train``.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from tqdm import tqdm

from .boxes import Box, ProposalOptions, propose_boxes
from .checksums import half_precision, sha256_of
from .coarse_training import epoch_summary
from .embedding_cache import CachedCase
from .evaluation import dice_score
from .sam_engine import Prompt, SamEngine
from .files import write_atomically, write_text_atomically

JITTER_FRACTION = 0.1


@dataclass
class DecoderTrainingOptions:
    output: Path
    epochs: int = 8
    learning_rate: float = 1e-4
    accumulate: int = 8
    seed: int = 0
    resume: bool = False


@dataclass(frozen=True)
class Sample:
    case: int
    slice: int
    box: Box


def samples(cases: list[CachedCase], options: ProposalOptions) -> list[Sample]:
    """One sample per slice that has a proposed box."""
    return [
        Sample(number, index, box)
        for number, case in enumerate(cases)
        for index, box in propose_boxes(case.coarse.astype(np.float32), case.spacing_xy, options).items()
    ]


def jitter(box: Box, shape: tuple[int, int], generator: random.Random) -> Box:
    """Move each edge by up to 10 % of the box size, staying inside the slice."""
    width, height = box.x1 - box.x0, box.y1 - box.y0
    x0 = min(max(box.x0 + generator.uniform(-1, 1) * JITTER_FRACTION * width, 0), shape[1] - 2)
    y0 = min(max(box.y0 + generator.uniform(-1, 1) * JITTER_FRACTION * height, 0), shape[0] - 2)
    x1 = min(max(box.x1 + generator.uniform(-1, 1) * JITTER_FRACTION * width, x0 + 1), shape[1] - 1)
    y1 = min(max(box.y1 + generator.uniform(-1, 1) * JITTER_FRACTION * height, y0 + 1), shape[0] - 1)
    return Box(x0, y0, x1, y1)


class DecoderTrainer:
    """Decoder forward pass with gradients, and its target in SAM's low-resolution mask frame."""

    def __init__(self, engine: SamEngine):
        self.engine = engine
        self.sam = engine.sam
        for parameter in self.sam.parameters():
            parameter.requires_grad_(False)
        for parameter in self.sam.mask_decoder.parameters():
            parameter.requires_grad_(True)

    def logits(self, embedding: torch.Tensor, box: Box, shape: tuple[int, int]) -> torch.Tensor:
        """Low-resolution mask logits [1, 1, 4·64, 4·64] for one box on one slice."""
        boxes = self.engine.transform.apply_boxes_torch(torch.tensor([box.as_tuple()], device=self.engine.device), shape)
        with torch.no_grad():
            sparse, dense = self.sam.prompt_encoder(points=None, boxes=boxes, masks=None)
        logits, _ = self.sam.mask_decoder(
            image_embeddings=embedding[None].float(),
            image_pe=self.sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return logits

    def target(self, mask: np.ndarray, low_resolution: int) -> torch.Tensor:
        """The reference mask resized and padded exactly like the encoder's input, at logit size."""
        input_size = self.engine.input_size(mask.shape)
        resized = F.interpolate(torch.from_numpy(mask)[None, None].float(), input_size, mode="nearest")
        image_size = self.sam.image_encoder.img_size
        padded = F.pad(resized, (0, image_size - input_size[1], 0, image_size - input_size[0]))
        return F.interpolate(padded, (low_resolution, low_resolution), mode="nearest").to(self.engine.device)

    def predict(self, case: CachedCase, sample: Sample) -> np.ndarray:
        embedding = case.embeddings[sample.slice].to(self.engine.device).float()
        return self.engine.decode(embedding, Prompt(box=sample.box.as_tuple()), case.labels.shape[1:])


def validation_dice(trainer: DecoderTrainer, cases: list[CachedCase], validation_samples: list[Sample]) -> float:
    """Mean whole-gland Dice per validation case, slices without a box counted as empty."""
    predictions = {number: np.zeros(cases[number].labels.shape, dtype=bool) for number in {s.case for s in validation_samples}}
    for sample in validation_samples:
        predictions[sample.case][sample.slice] = trainer.predict(cases[sample.case], sample)
    return float(np.mean([dice_score(prediction, cases[number].labels) for number, prediction in predictions.items()]))


def train_mask_decoder(
    engine: SamEngine,
    training: list[CachedCase],
    validation: list[CachedCase],
    options: DecoderTrainingOptions,
    manifest: dict,
    proposal: ProposalOptions = ProposalOptions(),
    log: Callable[[str], None] = print,
) -> dict:
    """Train the decoder; keep the best by validation Dice; write ``sammed.pt`` and ``sammed.json``."""
    options.output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(options.seed)
    generator = random.Random(options.seed)
    trainer = DecoderTrainer(engine)
    decoder = engine.sam.mask_decoder
    optimiser = torch.optim.Adam(decoder.parameters(), lr=options.learning_rate)
    loss_function = DiceCELoss(sigmoid=True)
    training_samples, validation_samples = samples(training, proposal), samples(validation, proposal)
    log(f"{len(training_samples)} training and {len(validation_samples)} validation slices")
    state_path, best_path = options.output / "last_state.pt", options.output / "sammed.pt"
    if options.resume and state_path.is_file():
        state = torch.load(state_path, map_location=engine.device, weights_only=False)
        decoder.load_state_dict(state["decoder"])
        optimiser.load_state_dict(state["optimiser"])
        start_epoch, best_dice, history = state["epoch"], state["best_dice"], state["history"]
        generator.setstate(state["generator"])
    else:  # epoch 0 is the zero-shot decoder: fine-tuning must beat it to replace it
        decoder.eval()
        start_epoch, best_dice = 0, validation_dice(trainer, validation, validation_samples)
        history = [{"epoch": 0, "loss": None, "validation_dice": best_dice}]
        _save_decoder(best_path, decoder)
    started = time.time()
    progress = tqdm(range(start_epoch, options.epochs), desc="epochs", initial=start_epoch, total=options.epochs)
    for epoch in progress:
        decoder.train()
        order = list(training_samples)
        generator.shuffle(order)
        losses = []
        optimiser.zero_grad()
        for step, sample in enumerate(order, start=1):
            case = training[sample.case]
            shape = case.labels.shape[1:]
            logits = trainer.logits(case.embeddings[sample.slice].to(engine.device), jitter(sample.box, shape, generator), shape)
            loss = loss_function(logits, trainer.target(case.labels[sample.slice] > 0, logits.shape[-1]))
            (loss / options.accumulate).backward()
            losses.append(loss.item())
            if step % options.accumulate == 0 or step == len(order):
                optimiser.step()
                optimiser.zero_grad()
        decoder.eval()
        dice = validation_dice(trainer, validation, validation_samples)
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "validation_dice": dice})
        progress.set_postfix(loss=f"{np.mean(losses):.4f}", val_dice=f"{dice:.4f}", best=f"{max(dice, best_dice):.4f}")
        if dice > best_dice:
            best_dice = dice
            _save_decoder(best_path, decoder)
        state = {
            "decoder": decoder.state_dict(),
            "optimiser": optimiser.state_dict(),
            "epoch": epoch + 1,
            "best_dice": best_dice,
            "history": history,
            "generator": generator.getstate(),
        }
        write_atomically(state_path, lambda temporary: torch.save(state, temporary))  # a stop never leaves half a state
        log(epoch_summary(epoch + 1, options.epochs, float(np.mean(losses)), dice))
    manifest = dict(
        manifest,
        method="sammed",
        epochs=options.epochs,
        learning_rate=options.learning_rate,
        best_validation_dice=round(best_dice, 4),
        history=history,
        device=str(engine.device),
        training_seconds_last_run=round(time.time() - started, 1),
        file=best_path.name,
        sha256=sha256_of(best_path),
    )
    write_text_atomically(options.output / "sammed.json", json.dumps(manifest, indent=2) + "\n")
    return manifest


def _save_decoder(path: Path, decoder: torch.nn.Module) -> None:
    torch.save(half_precision(decoder.state_dict()), path)
