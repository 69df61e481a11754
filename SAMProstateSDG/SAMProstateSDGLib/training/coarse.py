"""Training the coarse network on one source site (``samprostate train-coarse``)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import cast

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.transforms import (
    Compose,
    Identityd,
    OneOf,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandSpatialCropd,
    ResizeWithPadOrCropd,
)
from monai.utils import set_determinism
from tqdm import tqdm

from ..core.checksums import load_resume_state, load_state_strictly, sha256_of
from ..core.errors import InputError
from ..core.files import write_atomically, write_json
from ..io.dataset import Case, site_cases
from ..io.volume_io import normalised_array
from ..masks.boxes import COARSE_THRESHOLD
from ..modeling.coarse_net import (
    CoarseNetConfig,
    CoarseSegmenter,
    build_coarse_net,
    load_coarse_checkpoint,
    save_coarse_checkpoint,
    with_context,
)
from .defaults import COARSE_CONTEXT_MM, COARSE_INPUT_REPRESENTATION, COARSE_TRAINING, RESUME_STATE, VALIDATION_FRACTION
from .dg_augmentation import dg_appearance


@dataclass
class CoarseTrainingOptions:
    data: Path
    site: str
    output: Path
    epochs: int = COARSE_TRAINING.epochs
    batch_size: int = COARSE_TRAINING.batch_size
    learning_rate: float = COARSE_TRAINING.learning_rate
    validation_fraction: float = VALIDATION_FRACTION
    seed: int = 0
    resume: bool = False
    max_cases: int | None = None
    augmentation: str = "standard"
    initial_weights: Path | None = None
    input_representation: str = COARSE_INPUT_REPRESENTATION
    context_mm: float = COARSE_CONTEXT_MM


RESUME_KEYS = ("network", "optimiser", "scheduler", "epoch", "best_dice", "history")


@dataclass
class CanvasCase:
    name: str
    image: np.ndarray  # [slices, size, size] float32, 0..1
    mask: np.ndarray  # [slices, size, size] float32, 0/1
    slice_spacing_mm: float


def split_cases(cases: list[Case], validation_fraction: float, seed: int) -> tuple[list[Case], list[Case]]:
    """Case-level split (no slice of a validation patient is seen in training)."""
    shuffled = sorted(cases, key=lambda case: case.name)
    random.Random(seed).shuffle(shuffled)
    count = max(1, round(len(shuffled) * validation_fraction)) if len(shuffled) > 1 else 0
    return shuffled[count:], shuffled[:count]


def resumed_run(state: dict | None, run: dict, state_path: Path, epochs_fixed: bool = True) -> dict:
    """What defines this run (``run``: its options and cases), checked against the resume state it continues; returns the
    record to save with the next state. ``epochs_fixed``: the learning rate follows a schedule planned over the epochs
    (a cosine), so ``--epochs`` is part of the run; otherwise (a constant rate) it may change, to train longer."""
    saved = None if state is None else state.get("run")
    if not saved:
        return run
    compared = [key for key in run if epochs_fixed or key != "epochs"]
    changed = [f"{key} {saved.get(key)} -> {run[key]}" for key in compared if saved.get(key) != run[key]]
    if changed:
        epochs = saved.get("epochs")
        planned = f" (its learning-rate schedule is planned over {epochs} epoch{'s' * (epochs != 1)})" if epochs_fixed and epochs != run["epochs"] else ""
        raise InputError(f"{state_path} was saved by a run with other options ({'; '.join(changed)}){planned}: resume it with its own "
                         "options, or start afresh with --overwrite")
    return run


def forget_previous_run(output: Path, manifest_name: str) -> None:
    """A run that does not resume removes the resume state and manifest a previous run left in ``output`` before it writes
    its first model file: a later ``--resume`` would otherwise continue that run over the new file."""
    for name in (RESUME_STATE, manifest_name):
        (output / name).unlink(missing_ok=True)


def require_validation(training: list, validation: list, site: str) -> None:
    """Refuse a split without a validation case: the best checkpoint would be chosen on nothing."""
    if not training or not validation:
        count = len(training) + len(validation)
        raise InputError(f"{count} case{'s' * (count != 1)} of site {site}: training needs at least 2, one of them for validation")


def require_finite_loss(losses: list[float], epoch: int) -> None:
    loss = float(np.mean(losses))
    if not np.isfinite(loss):
        raise InputError(f"training diverged: loss {loss} in epoch {epoch}; try a lower --learning-rate")


def to_canvas_case(case: Case, config: CoarseNetConfig) -> CanvasCase:
    image, labels = case.read()
    canvas = config.canvas
    return CanvasCase(
        case.name,
        canvas.to_canvas(normalised_array(image), image),
        canvas.to_canvas((labels > 0).astype(np.float32), image, nearest=True),
        image.GetSpacing()[2],
    )


def smaller_field_of_view(size: int) -> Compose:
    """A random centred-or-not crop of 5/8 to all of the canvas, padded back: a smaller field of view."""
    keys = ("image", "label")
    return Compose(
        [
            RandSpatialCropd(keys, roi_size=(size * 5 // 8,) * 2, max_roi_size=(size,) * 2, random_size=True),
            ResizeWithPadOrCropd(keys, spatial_size=(size, size)),
        ]
    )


def _geometry(size: int, field_of_view_share: float, probability: float, rotation: float, scale: float, translation: float) -> list:
    """A smaller field of view in ``field_of_view_share`` of the samples, then a random rotation, zoom and shift."""
    keys = ("image", "label")
    return [
        OneOf([Identityd(keys), smaller_field_of_view(size)], weights=(1 - field_of_view_share, field_of_view_share)),
        RandAffined(
            keys,
            prob=probability,
            rotate_range=rotation,
            scale_range=(scale, scale),
            translate_range=(translation, translation),
            mode=("bilinear", "nearest"),
            padding_mode="zeros",
        ),
    ]


def augmentations(size: int, kind: str = "standard") -> Compose:
    """``standard``: the geometry, field-of-view, contrast, noise, blur and bias-field changes a new
    scanner brings. ``dg``: generic domain-generalisation families, stronger and wider (see README)."""
    if kind == "dg":
        return dg_augmentations(size)
    keys = ("image", "label")
    return Compose(
        [
            *_geometry(size, field_of_view_share=0.3, probability=0.7, rotation=0.26, scale=0.25, translation=12),
            RandFlipd(keys, prob=0.5, spatial_axis=1),
            RandBiasFieldd("image", prob=0.3, coeff_range=(0.0, 0.3)),
            RandAdjustContrastd("image", prob=0.4, gamma=(0.6, 1.6)),
            RandScaleIntensityd("image", prob=0.3, factors=0.2),
            RandGaussianSmoothd("image", prob=0.2, sigma_x=(0.3, 1.2), sigma_y=(0.3, 1.2)),
            RandGaussianNoised("image", prob=0.3, std=0.04),
        ]
    )


def dg_augmentations(size: int) -> Compose:
    """Single-source DG: field of view and zoom, flips along both in-plane axes, then the appearance
    families of ``dg_appearance`` (resolution, fields, curves, GIN, blur, noise); the image ends in 0..1."""
    keys = ("image", "label")
    return Compose(
        [
            *_geometry(size, field_of_view_share=0.4, probability=0.8, rotation=0.35, scale=0.3, translation=16),
            RandFlipd(keys, prob=0.5, spatial_axis=1),
            RandFlipd(keys, prob=0.3, spatial_axis=0),
            *dg_appearance(),
        ]
    )


def coarse_run(options: CoarseTrainingOptions, training_cases: list) -> dict:
    """What defines a coarse-network run, for ``resumed_run``."""
    return {
        "model": "coarse", "data": str(Path(options.data).resolve()), "site": options.site, "training_cases": [case.name for case in training_cases],
        "batch_size": options.batch_size, "learning_rate": options.learning_rate, "seed": options.seed, "augmentation": options.augmentation,
        "initial_weights": None if options.initial_weights is None else str(Path(options.initial_weights).resolve()),
        "initial_weights_sha256": None if options.initial_weights is None else sha256_of(options.initial_weights),  # replaced since: refused
        "input_representation": options.input_representation, "context_mm": options.context_mm, "epochs": options.epochs,
    }


def epoch_summary(epoch: int, epochs: int, loss: float, dice: float) -> str:
    """The line logged after each epoch's state is saved; ``training_process`` parses it."""
    return f"epoch {epoch}/{epochs} loss {loss:.4f} val_dice {dice:.4f}"


def seed_epoch(seed: int, epoch: int, transform: Compose) -> None:
    """Seed every random draw of an epoch (shuffling, augmentation, dropout) from (seed, epoch) alone, so a
    resumed training runs the epochs an uninterrupted one would have run."""
    epoch_seed = int(np.random.SeedSequence((seed, epoch)).generate_state(1)[0])
    set_determinism(seed=epoch_seed)
    transform.set_random_state(seed=epoch_seed)  # each random transform's own state, nested ones included


def volume_dice(segmenter: CoarseSegmenter, cases: list[CanvasCase]) -> float:
    metric = DiceMetric(include_background=True, reduction="mean", ignore_empty=False)
    for case in cases:
        prediction = segmenter.canvas_probabilities(case.image, case.slice_spacing_mm) > COARSE_THRESHOLD
        metric(torch.from_numpy(prediction)[None, None].float(), torch.from_numpy(case.mask)[None, None])
    return float(cast(torch.Tensor, metric.aggregate()).item())  # reduction="mean" aggregates to one tensor


def train_coarse_net(
    options: CoarseTrainingOptions,
    device: torch.device,
    config: CoarseNetConfig | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train, keep the best checkpoint by validation Dice, and write its manifest; returns the manifest."""
    config = config or CoarseNetConfig(input_representation=options.input_representation, context_mm=options.context_mm)
    state_path, best_path = options.output / RESUME_STATE, options.output / "coarse.pt"
    state = load_resume_state(state_path, RESUME_KEYS) if options.resume else None
    set_determinism(seed=options.seed)
    cases = site_cases(options.data, options.site)[: options.max_cases]
    training_cases, validation_cases = split_cases(cases, options.validation_fraction, options.seed)
    require_validation(training_cases, validation_cases, options.site)
    log(f"{len(training_cases)} training and {len(validation_cases)} validation cases from {options.site}")
    training = [to_canvas_case(case, config) for case in tqdm(training_cases, desc="reading", leave=False)]
    validation = [to_canvas_case(case, config) for case in validation_cases]
    options.output.mkdir(parents=True, exist_ok=True)
    if state is None:
        forget_previous_run(options.output, "coarse.json")
    slices = [
        {"image": image, "label": mask[None]}
        for case in training
        for image, mask in zip(with_context(case.image, case.slice_spacing_mm, config.context_mm), case.mask)
    ]
    transform = augmentations(config.canvas.size, options.augmentation)
    loader = DataLoader(
        Dataset(slices, transform=transform),
        batch_size=options.batch_size,
        shuffle=True,
        drop_last=len(slices) > options.batch_size,
    )

    network = build_coarse_net(config).to(device)
    if options.initial_weights is not None and not (options.resume and (options.output / RESUME_STATE).is_file()):
        initial, initial_config = load_coarse_checkpoint(options.initial_weights)
        if initial_config != config:
            raise InputError(f"{options.initial_weights} has another architecture than the one being trained")
        network.load_state_dict(initial.state_dict())
        log(f"starting from the weights of {options.initial_weights}")
    optimiser = torch.optim.Adam(network.parameters(), lr=options.learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=options.epochs)
    loss_function = DiceCELoss(sigmoid=True)
    start_epoch, best_dice, history = 0, -1.0, []
    run = resumed_run(state, coarse_run(options, training_cases), state_path)  # hashes --initial-weights now, before any epoch
    if state is not None:
        load_state_strictly(network, state["network"], f"{state_path} does not match the coarse network")
        optimiser.load_state_dict(state["optimiser"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best_dice, history = state["epoch"], state["best_dice"], state["history"]
        log(f"resuming after epoch {start_epoch} (best validation Dice {best_dice:.4f})")

    segmenter = CoarseSegmenter([network], [config], device)
    started = time.time()
    progress = tqdm(range(start_epoch, options.epochs), desc="epochs", initial=start_epoch, total=options.epochs)
    for epoch in progress:
        seed_epoch(options.seed, epoch, transform)
        network.train()
        losses = []
        for batch in loader:
            optimiser.zero_grad()
            loss = loss_function(network(batch["image"].to(device)), batch["label"].to(device))
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        scheduler.step()
        require_finite_loss(losses, epoch + 1)
        network.eval()
        dice = volume_dice(segmenter, validation)
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "validation_dice": dice})
        progress.set_postfix(loss=f"{np.mean(losses):.4f}", val_dice=f"{dice:.4f}", best=f"{max(best_dice, dice):.4f}")
        if dice > best_dice:
            best_dice = dice
            save_coarse_checkpoint(best_path, network, config)
        state = {
            "network": network.state_dict(),
            "optimiser": optimiser.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch + 1,
            "best_dice": best_dice,
            "history": history,
            "run": run,
        }
        write_atomically(state_path, partial(torch.save, state))  # a stop never leaves half a state
        log(epoch_summary(epoch + 1, options.epochs, float(np.mean(losses)), dice))

    manifest = {
        "model": "coarse",
        "architecture": config.to_json(),
        "data": str(options.data),
        "site": options.site,
        "training_cases": [case.name for case in training_cases],
        "validation_cases": [case.name for case in validation_cases],
        "command": (
            f"samprostate train-coarse --data {options.data} --site {options.site} --epochs {options.epochs} "
            f"--batch-size {options.batch_size} --learning-rate {options.learning_rate} --seed {options.seed} "
            f"--augmentation {options.augmentation} --input-representation {config.input_representation}"
            + f" --context-mm {config.context_mm}"
            + (f" --initial-weights {options.initial_weights}" if options.initial_weights else "")
            + (f" --max-cases {options.max_cases}" if options.max_cases else "")
        ),
        "augmentation": options.augmentation,
        "initial_weights": (
            {"file": str(options.initial_weights), "sha256": run["initial_weights_sha256"]} if options.initial_weights else None
        ),
        "epochs": options.epochs,
        "best_validation_dice": round(best_dice, 4),
        "history": history,
        "device": str(device),
        "training_seconds_last_run": round(time.time() - started, 1),
        "file": best_path.name,
        "sha256": sha256_of(best_path),
    }
    write_json(options.output / "coarse.json", manifest)
    return manifest
