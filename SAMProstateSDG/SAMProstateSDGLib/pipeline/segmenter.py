"""The pipeline every method shares: volume → slices → coarse mask → boxes → SAM prompts → masks → label volume.

A method (``methods.registry``) loads onto the base models of a ``ProstateSegmenter``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..core.catalog import default_entry
from ..core.devices import pick_device
from ..core.errors import InputError
from ..core.labels import PROSTATE_LABEL
from ..io.volume_io import normalised_array
from ..masks.boxes import (
    DEFAULT_COARSE_OPTIONS,
    Box,
    CoarseOptions,
    ComponentFilter,
    ProposalOptions,
    box_from_clicks,
    component_boxes,
    filtered_mask,
    slice_boxes,
    start_box,
)
from ..masks.canvas import Canvas, encoder_canvas
from ..masks.confidence import SliceConfidence, slice_confidences
from ..masks.z_smoothing import Z_SMOOTHING_MM, affected_slices, neighbour_weights, smoothed_logits
from ..modeling.backends import candidates
from ..modeling.coarse_net import CoarseSegmenter
from ..modeling.encoder_stages import EncoderFeatures
from ..modeling.interactive import InteractiveEngine
from ..modeling.sam_engine import EncodedVolume, Prompt, SamEngine, load_sam
from .localisation import coarse_reading

BOX_TOLERANCE = 1e-3  # pixels: boxes closer than this are the same box


@dataclass
class PreparedVolume:
    """A volume read once: its geometry, normalised voxels, and lazily encoded slices."""

    image: sitk.Image
    normalised: np.ndarray
    encoded: EncodedVolume
    coarse: np.ndarray | None = field(default=None, repr=False)
    header_swaps_superior_inferior: bool = False  # the coarse network read the slices against the header (slice-order check)
    canvas_slices: np.ndarray | None = field(default=None, repr=False)
    features: EncoderFeatures | None = field(default=None, repr=False)
    components: dict[tuple[float, ComponentFilter], np.ndarray] = field(default_factory=dict, repr=False)  # by (threshold, filter)

    @property
    def spacing_xy(self) -> tuple[float, float]:
        return self.image.GetSpacing()[:2]

    @property
    def canvas(self) -> Canvas:
        return encoder_canvas(self.encoded.engine.sam.image_encoder.img_size)

    def on_canvas(self) -> np.ndarray:
        """The normalised slices on the encoder canvas, resampled once."""
        if self.canvas_slices is None:
            self.canvas_slices = self.canvas.to_canvas(self.normalised, self.image)
        return self.canvas_slices

    def from_canvas(self, probabilities: np.ndarray) -> np.ndarray:
        """Probabilities [slices, side, side] on the encoder canvas, resampled onto the volume's grid."""
        return self.canvas.from_canvas(probabilities, self.image)

    def encoder_features(self) -> EncoderFeatures:
        """Embeddings and intermediate encoder features of every canvas slice, computed once (DeSAM needs them)."""
        if self.features is None:
            self.features = self.encoded.engine.encode_features(self.on_canvas())
        return self.features


class ProstateSegmenter:
    """Coarse network + SAM, loaded once and reused for any number of volumes and prompts."""

    def __init__(
        self,
        sam: SamEngine,
        coarse: CoarseSegmenter,
        options: ProposalOptions = ProposalOptions(),
        coarse_options: CoarseOptions = DEFAULT_COARSE_OPTIONS,
    ):
        self.sam = sam
        self.coarse = coarse
        self.options = options
        self.coarse_options = coarse_options

    @classmethod
    def load(
        cls,
        device: str = "auto",
        sam_type: str | None = None,
        sam_checkpoint: str | Path | None = None,
        coarse_checkpoint: str | Path | None = None,
        options: ProposalOptions = ProposalOptions(),
        precision: str = "auto",
        coarse_options: CoarseOptions = DEFAULT_COARSE_OPTIONS,
        backend: str = "auto",
        log=None,
    ) -> ProstateSegmenter:
        """The base models (coarse network + SAM): the shipped ones by default; a user's SAM or coarse checkpoint where given.

        A method (``methods.registry``) loads onto them. ``backend`` (auto, torch, openvino, onnxruntime) and ``precision`` (auto, fp32, bf16) choose
        how the box-prompted image encoder runs (``backends.choose_encoder``; "auto": measured here).
        ``coarse_options``: the levers on what the coarse network reads (``localisation``).
        """
        torch_device = pick_device(device)
        candidates(backend, precision, torch_device)  # refuse a backend that cannot run here before loading anything
        sam_entry, coarse_entry = default_entry("sam"), default_entry("coarse")
        if sam_checkpoint is None:
            sam = load_sam(sam_entry.model_type, sam_entry.path, sam_entry.sha256)
        else:
            sam = load_sam(sam_type or "vit_b", sam_checkpoint)
        if coarse_checkpoint is None:
            coarse = CoarseSegmenter.from_checkpoint(coarse_entry.path, torch_device, coarse_entry.sha256)
        else:
            coarse = CoarseSegmenter.from_checkpoint(coarse_checkpoint, torch_device)
        box_only = sam_checkpoint is None or sam_type == "litemedsam"
        # on a CPU, batches of slices encode slower per slice than one at a time (samprostate bench)
        batch_size = 1 if torch_device.type == "cpu" else 4
        engine = SamEngine(sam, torch_device, batch_size, box_only)
        engine.use_backend(backend, precision, log)
        return cls(engine, coarse, options, coarse_options)

    def with_decoder(self, checkpoint: str | Path, sha256: str | None = None) -> ProstateSegmenter:
        """The same models with fine-tuned mask decoder weights (the encoder is shared, not reloaded)."""
        return ProstateSegmenter(self.sam.with_mask_decoder(checkpoint, sha256), self.coarse, self.options, self.coarse_options)

    def with_coarse(self, checkpoint: str | Path, sha256: str | None = None) -> ProstateSegmenter:
        """The same SAM with another coarse network proposing the boxes."""
        return ProstateSegmenter(
            self.sam, CoarseSegmenter.from_checkpoint(checkpoint, self.sam.device, sha256), self.options, self.coarse_options
        )

    def prepare(self, image: sitk.Image) -> PreparedVolume:
        normalised = normalised_array(image)
        return PreparedVolume(image, normalised, EncodedVolume(self.sam, normalised))

    def coarse_probabilities(self, volume: PreparedVolume) -> np.ndarray:
        if volume.coarse is None:
            reading = coarse_reading(self.coarse, volume.image, self.coarse_options, volume.normalised)
            volume.coarse, volume.header_swaps_superior_inferior = reading.probabilities, reading.header_swaps_superior_inferior
        return volume.coarse

    def coarse_component(self, volume: PreparedVolume, options: ProposalOptions | None = None) -> np.ndarray:
        """The thresholded, component-filtered coarse mask (``filtered_mask``), computed once per threshold and filter."""
        options = options or self.options
        key = (options.threshold, options.component_filter)
        if key not in volume.components:
            volume.components[key] = filtered_mask(
                self.coarse_probabilities(volume), options.threshold, options.component_filter, volume.image.GetSpacing()
            )
        return volume.components[key]

    def propose_boxes(self, volume: PreparedVolume, options: ProposalOptions | None = None) -> dict[int, Box]:
        """``masks.boxes.propose_boxes`` of the volume's coarse probabilities, from its cached coarse component."""
        options = options or self.options
        return component_boxes(self.coarse_component(volume, options), volume.image.GetSpacing(), options.margin_mm)

    def slice_confidence(self, volume: PreparedVolume, labels: np.ndarray, predicted_iou: dict[int, float] | None = None) -> dict[int, SliceConfidence]:
        """Each segmented slice's confidence (``masks.confidence``), and that of the slices just past them; ``predicted_iou``:
        SAM's, per boxed slice (None for a method that prompts itself)."""
        return slice_confidences(labels > 0, self.coarse_component(volume), self.coarse_probabilities(volume), predicted_iou)

    def segment_with_boxes(self, volume: PreparedVolume, boxes: dict[int, Box]) -> np.ndarray:
        """Label volume (uint8, [slices, rows, columns]) with SAM's mask inside each box."""
        return self.box_session(volume, boxes).labels

    def refined_boxes(self, volume: PreparedVolume, session: BoxSegmentation, margin_mm: float) -> dict[int, Box]:
        """Box refinement: each slice's box redrawn around SAM's own mask (widened by ``margin_mm``) for a second pass;
        a slice where SAM found nothing keeps its box."""
        spacing = volume.spacing_xy
        refined = slice_boxes(session.labels > 0, (margin_mm / spacing[0], margin_mm / spacing[1]), shape=session.labels.shape[1:])
        return {index: refined.get(index, box) for index, box in session.boxes.items()}

    def box_session(self, volume: PreparedVolume, boxes: dict[int, Box]) -> BoxSegmentation:
        """The volume segmented with ``boxes`` (its labels, and SAM's predicted IoU per slice)."""
        session = BoxSegmentation(volume, self.sam, self.options.z_smoothing_mm)
        session.update(boxes)
        return session


class BoxSegmentation:
    """The labels of one prepared volume, kept in step with its boxes (what a box editor needs).

    ``update`` decodes only the slices whose box was added or moved and clears those whose box was
    removed; each slice's SAM embedding is computed once and cached in the prepared volume.
    ``decoder`` may be an engine with another mask decoder sharing the volume's image encoder.
    A slice segmented from its box alone is SAM's logits smoothed with those of its neighbours
    (``masks.z_smoothing``, sigma ``z_smoothing_mm``); a slice segmented with clicks is the clicks'
    mask, and clicks never change another slice.
    """

    def __init__(self, volume: PreparedVolume, decoder: SamEngine | None = None, z_smoothing_mm: float = Z_SMOOTHING_MM):
        self.volume = volume
        self.decoder = decoder
        self.weights = neighbour_weights(volume.image.GetSpacing()[2], z_smoothing_mm)
        self.box_logits: dict[int, np.ndarray] = {}  # SAM's logits of each slice decoded from its box alone
        self.boxes: dict[int, Box] = {}
        self.labels: np.ndarray = np.zeros(volume.normalised.shape, dtype=np.uint8)
        self.predicted_iou: dict[int, float] = {}  # SAM's own estimate of each segmented slice's IoU
        self.segmented = False  # whether a slice was decoded, or a method that prompts itself set the labels
        self.clicked: set[int] = set()  # slices last segmented with clicks

    def set_labels(self, labels: np.ndarray) -> None:
        """The labels of a method that prompts itself (the whole volume at once)."""
        self.labels = labels
        self.segmented = True

    def changed_slices(self, boxes: dict[int, Box]) -> list[int]:
        """Slices whose box differs from the one last segmented (added, moved or removed)."""
        return sorted(index for index in boxes.keys() | self.boxes.keys() if not _same_box(boxes.get(index), self.boxes.get(index)))

    def update(self, boxes: dict[int, Box]) -> list[int]:
        """Re-decode the changed slices (encoded together in batches); returns the slices whose labels were
        recomputed: those and their smoothing neighbours."""
        changed = self.changed_slices(boxes)
        self.volume.encoded.encode([index for index in changed if index in boxes])
        for index in changed:
            self.predicted_iou.pop(index, None)
            self.box_logits.pop(index, None)
            self.clicked.discard(index)
            if index in boxes:
                self._decode_box(index, boxes[index])
        self.boxes = dict(boxes)
        return self._threshold_box_slices(set(changed))

    def _threshold_box_slices(self, changed: set[int]) -> list[int]:
        """Labels of the slices segmented from their box alone that read the ``changed`` slices' logits, and of the
        ``changed`` slices themselves (cleared when they have neither a box nor clicks); returns them."""
        recomputed = sorted((changed | affected_slices(changed, self.weights)) & set(range(len(self.labels))))
        for index in recomputed:
            if index in self.clicked:
                continue
            self.labels[index] = 0
            if index in self.box_logits:
                smoothed = smoothed_logits(self.box_logits, index, self.weights)
                self.labels[index][smoothed > (self.decoder or self.volume.encoded.engine).sam.mask_threshold] = PROSTATE_LABEL
                self.segmented = True
        return [index for index in recomputed if index in changed or (index in self.box_logits and index not in self.clicked)]

    def refine_slice(self, index: int, prompt: Prompt, neighbours: dict[int, Box] | None = None) -> Box | None:
        """Segment one slice with clicks (and perhaps a box); later box updates keep it unless its box moves.

        A box-only SAM (LiteMedSAM) gets the clicks as a box edit (``box_from_clicks``). The interactive
        decoder, on a slice without a box, starts from the box of the coarse network's region under the
        first positive click (when the volume's coarse probabilities are at hand, as after proposing
        boxes), or else the nearest box among ``neighbours`` (default: the session's boxes) shrunk around
        it (``start_box``).
        Returns the box the slice was segmented with, if any.
        """
        engine = self.decoder or self.volume.encoded.engine
        if engine.box_only:
            box = box_from_clicks(Box(*prompt.box) if prompt.box else None, prompt.points, prompt.point_labels, self.labels.shape[1:])
            if box is None:
                raise InputError(f"LiteMedSAM segments from a box: add a box on slice {index}, or click two opposite corners of the gland")
            prompt = Prompt(box=box.as_tuple())
        elif prompt.box is None and isinstance(engine, InteractiveEngine):
            others = {boxed: box for boxed, box in (self.boxes if neighbours is None else neighbours).items() if boxed != index}
            coarse = None if self.volume.coarse is None else self.volume.coarse[index]
            start = start_box(others, index, prompt.points, prompt.point_labels, self.labels.shape[1:], coarse, self.volume.spacing_xy)
            if start is not None:
                prompt = replace(prompt, box=start.as_tuple())
        self.labels[index] = 0
        self._segment_slice(index, prompt)
        self.clicked.add(index)
        if prompt.box is not None:
            self.boxes[index] = Box(*prompt.box)
        return self.boxes.get(index)

    def unclick_slice(self, index: int, box: Box | None) -> None:
        """A slice whose clicks were all removed: segmented from its box alone again (empty without one)."""
        self.predicted_iou.pop(index, None)
        self.box_logits.pop(index, None)
        self.clicked.discard(index)
        self.boxes.pop(index, None)
        if box is not None:
            self._decode_box(index, box)
            self.boxes[index] = box
        self._threshold_box_slices({index})

    def _decode_box(self, index: int, box: Box) -> None:
        """SAM's logits and predicted IoU of the slice from its box alone (``_threshold_box_slices`` makes its mask)."""
        self.box_logits[index], self.predicted_iou[index] = self.volume.encoded.segment_logits(index, Prompt(box=box.as_tuple()), self.decoder)

    def _segment_slice(self, index: int, prompt: Prompt) -> None:
        mask, self.predicted_iou[index] = self.volume.encoded.segment_scored(index, prompt, self.decoder)
        self.labels[index][mask] = PROSTATE_LABEL
        self.segmented = True


def _same_box(first: Box | None, second: Box | None) -> bool:
    if first is None or second is None:
        return first is second
    return bool(np.allclose(first.as_tuple(), second.as_tuple(), atol=BOX_TOLERANCE))
