"""The one fine-tuning loop behind ``samprostate train --method ...`` and the Slicer training tab.

A method says what learns, what a training sample is, its loss, and how it segments a cached
validation case. The loop does the rest: shuffling, batches, progress, a per-epoch log line,
validation Dice, keeping the best checkpoint (epoch 0 is the untrained start, so fine-tuning
must beat it), an atomic resume state after every epoch, and the JSON manifest.
"""

from __future__ import annotations

import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..core.checksums import half_precision, load_resume_state, sha256_of
from ..core.files import write_atomically, write_json
from ..masks.metrics import dice_score
from .coarse import epoch_summary, forget_previous_run, require_finite_loss, require_validation, resumed_run
from .defaults import RESUME_STATE
from .embedding_cache import CachedCase

RESUME_KEYS = ("trained", "optimiser", "scheduler", "epoch", "best_dice", "history", "generator")


@dataclass(frozen=True)
class SliceSample:
    """One slice of one training case."""

    case: int
    slice: int


@dataclass
class TrainingOptions:
    output: Path
    epochs: int = 8
    learning_rate: float = 1e-4
    batch_size: int = 8
    seed: int = 0
    resume: bool = False


def fine_tuning_run(name: str, options: TrainingOptions, manifest: dict) -> dict:
    """What defines a fine-tuning run of method ``name`` (its data and cases from the ``manifest`` begun), for ``resumed_run``."""
    described = {key: manifest.get(key) for key in ("site", "training_cases", "augmented_copies")}
    described["data"] = str(Path(manifest["data"]).resolve()) if "data" in manifest else None
    return {"model": name, **described, "batch_size": options.batch_size, "learning_rate": options.learning_rate, "seed": options.seed, "epochs": options.epochs}


class FineTuningMethod(ABC):
    """What one method trains; ``module`` holds exactly the parameters that are learnt and saved."""

    module: torch.nn.Module
    cached_features: tuple[str, ...]  # what it reads from the embedding cache
    encoder_grid: str = "native"  # the cache's grid: slice pixels, or the encoder canvas of self-prompting methods

    @abstractmethod
    def samples(self, cases: list[CachedCase]) -> list:
        """Training samples (hashable, picklable) of the cases."""

    @abstractmethod
    def loss(self, cases: list[CachedCase], batch: list, generator: random.Random) -> torch.Tensor:
        """Mean loss of a batch of samples, with training-time augmentation drawn from ``generator``."""

    @abstractmethod
    def segment_case(self, case: CachedCase) -> np.ndarray:
        """Labels [slices, rows, columns] of a cached case (for validation)."""

    def optimiser(self, options: TrainingOptions, steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
        return torch.optim.Adam(self.trainable_parameters(), lr=options.learning_rate), None

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [parameter for parameter in self.module.parameters() if parameter.requires_grad]

    def checkpoint_state(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_checkpoint_state(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)


def validation_dice(method: FineTuningMethod, cases: list[CachedCase]) -> float:
    """Mean whole-gland Dice over the validation cases."""
    with torch.no_grad():
        return float(np.mean([dice_score(method.segment_case(case), case.labels) for case in cases]))


def train(
    name: str,
    method: FineTuningMethod,
    training: list[CachedCase],
    validation: list[CachedCase],
    options: TrainingOptions,
    manifest: dict,
    log: Callable[[str], None] = print,
) -> dict:
    """Train; keep the best by validation Dice as OUTPUT/NAME.pt (``name``: the method's registry id); describe it in OUTPUT/NAME.json."""
    state_path, best_path = options.output / RESUME_STATE, options.output / f"{name}.pt"
    state = load_resume_state(state_path, RESUME_KEYS) if options.resume else None
    require_validation(training, validation, manifest.get("site", "?"))
    torch.manual_seed(options.seed)
    generator = random.Random(options.seed)
    training_samples = method.samples(training)
    batches_per_epoch = -(-len(training_samples) // options.batch_size)
    optimiser, scheduler = method.optimiser(options, options.epochs * batches_per_epoch)
    run = resumed_run(state, fine_tuning_run(name, options, manifest), state_path, epochs_fixed=scheduler is not None)
    options.output.mkdir(parents=True, exist_ok=True)
    log(f"{len(training_samples)} training samples, {len(validation)} validation cases")
    if state is not None:
        method.load_checkpoint_state(state["trained"])
        optimiser.load_state_dict(state["optimiser"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        start_epoch, best_dice, history = state["epoch"], state["best_dice"], state["history"]
        generator.setstate(state["generator"])
    else:
        method.module.eval()
        start_epoch, best_dice = 0, validation_dice(method, validation)
        history = [{"epoch": 0, "loss": None, "validation_dice": best_dice}]
        forget_previous_run(options.output, f"{name}.json")
        _save_trained(best_path, method)
    started = time.time()
    progress = tqdm(range(start_epoch, options.epochs), desc="epochs", initial=start_epoch, total=options.epochs)
    for epoch in progress:
        method.module.train()
        order = list(training_samples)
        generator.shuffle(order)
        losses = []
        for start in tqdm(range(0, len(order), options.batch_size), desc=f"epoch {epoch + 1}", leave=False):
            loss = method.loss(training, order[start : start + options.batch_size], generator)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            if scheduler is not None:
                scheduler.step()
            losses.append(loss.item())
        require_finite_loss(losses, epoch + 1)
        method.module.eval()
        dice = validation_dice(method, validation)
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "validation_dice": dice})
        progress.set_postfix(loss=f"{np.mean(losses):.4f}", val_dice=f"{dice:.4f}", best=f"{max(dice, best_dice):.4f}")
        if dice > best_dice:
            best_dice = dice
            _save_trained(best_path, method)
        state = {
            "trained": method.checkpoint_state(),
            "optimiser": optimiser.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "epoch": epoch + 1,
            "best_dice": best_dice,
            "history": history,
            "generator": generator.getstate(),
            "run": run,
        }
        write_atomically(state_path, partial(torch.save, state))  # a stop never leaves half a state
        log(epoch_summary(epoch + 1, options.epochs, float(np.mean(losses)), dice))
    manifest = dict(
        manifest,
        method=name,
        epochs=options.epochs,
        learning_rate=options.learning_rate,
        batch_size=options.batch_size,
        best_validation_dice=round(best_dice, 4),
        history=history,
        training_seconds_last_run=round(time.time() - started, 1),
        file=best_path.name,
        sha256=sha256_of(best_path),
    )
    write_json(options.output / f"{name}.json", manifest)
    return manifest


def _save_trained(path: Path, method: FineTuningMethod) -> None:
    state = half_precision(method.checkpoint_state())
    write_atomically(path, lambda temporary: torch.save(state, temporary))
