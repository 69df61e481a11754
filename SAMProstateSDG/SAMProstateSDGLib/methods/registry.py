"""One interface for every segmentation method, and the registry that lists them.

A method says what it is (id, titles), what it takes (boxes, points), the segments it writes,
which catalog kind its trained model has, how it loads onto the base models (coarse network +
SAM, ``pipeline.segmenter.ProstateSegmenter``), how it segments a prepared volume, its rows in
``evaluate`` and its trainer. Every other module in this package defines methods with
``@register``; ``methods()`` imports them all, so adding a method is one module here (plus its
trainer in ``trainers/`` and its catalog entry). Importing the registry and the method modules
loads no torch: the Slicer module lists the methods before its requirements are installed.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ..core.catalog import DEFAULT_GRID_SIDE, CatalogEntry, catalog, default_entry
from ..core.errors import InputError
from ..core.labels import PROSTATE_LABEL, ZONE_NAMES
from ..training.defaults import TrainingDefaults

if TYPE_CHECKING:
    from ..io.provenance import Provenance
    from ..masks.boxes import Box
    from ..masks.confidence import SliceConfidence
    from ..pipeline.segmenter import BoxSegmentation, PreparedVolume, ProstateSegmenter
    from ..training.loop import FineTuningMethod

Predictor = Callable[["PreparedVolume", np.ndarray], np.ndarray]  # (volume, reference labels) -> predicted labels

DEFAULT_METHOD = "zero-shot"


@dataclass(frozen=True)
class Segment:
    """One segment a method writes: its name, label value and display colour (RGB, 0-1)."""

    name: str
    label: int
    colour: tuple[float, float, float]


PROSTATE_SEGMENTS = (Segment("prostate", PROSTATE_LABEL, (0.85, 0.55, 0.35)),)
ZONE_COLOURS = {1: (0.95, 0.8, 0.3), 2: (0.35, 0.65, 0.9)}
ZONE_SEGMENTS = tuple(Segment(name, label, ZONE_COLOURS[label]) for label, name in ZONE_NAMES.items())


@dataclass(frozen=True)
class MethodOptions:
    """Options some methods read: ``grid_side`` (points per side of a prompt grid), ``merge_slices``
    (four slices per encoder pass, SAMMed's merge; box-prompted methods)."""

    grid_side: int = DEFAULT_GRID_SIDE
    merge_slices: bool = False


@dataclass
class Segmentation:
    """A method's result on one volume: labels [slices, rows, columns], the boxes it used (none for
    methods that prompt themselves) and each segmented slice's confidence."""

    labels: np.ndarray
    boxes: dict[int, Box] = field(default_factory=dict)
    confidences: dict[int, SliceConfidence] = field(default_factory=dict)


class Method:
    """A segmentation method; subclasses set the class attributes and implement ``load``."""

    id: ClassVar[str]
    title: ClassVar[str]  # for tables, reports and the Slicer method selector
    short_title: ClassVar[str]  # for the Slicer Training tab
    scene_name: ClassVar[str]  # the stable name Slicer scenes store (an enum member name)
    order: ClassVar[int]  # position in menus and tables
    takes_boxes: ClassVar[bool] = False  # segments inside boxes (the coarse network's, or the user's)
    takes_points: ClassVar[bool] = False  # its decoder was trained with clicks (points), not boxes only
    segments: ClassVar[tuple[Segment, ...]] = PROSTATE_SEGMENTS
    model_kind: ClassVar[str | None] = None  # the catalog kind of its trained model; None: it needs none
    training: ClassVar[TrainingDefaults | None] = None  # None: not trainable with ``samprostate train``
    row_title: ClassVar[str | None] = None  # its row in ``evaluate`` (default: the title)

    @property
    def zonal(self) -> bool:
        return len(self.segments) > 1

    def shipped_model(self) -> CatalogEntry | None:
        """Its trained model in the catalog (None when it needs none, or none is shipped)."""
        if self.model_kind is None:
            return None
        return next((entry for entry in catalog().values() if entry.kind == self.model_kind), None)

    def check_sam(self, own_sam_checkpoint: bool) -> None:
        """Refuse a user's own SAM with a method whose trained model builds on the shipped LiteMedSAM."""
        if self.model_kind is not None and own_sam_checkpoint:
            raise InputError(f"the shipped {self.id} model belongs to LiteMedSAM; it cannot be used with your own SAM checkpoint")

    def load(self, base: ProstateSegmenter, model: CatalogEntry | None = None, options: MethodOptions = MethodOptions()) -> MethodSegmenter:
        """This method on ``base``, with ``model`` (default: the shipped one) as its trained model."""
        raise NotImplementedError

    def _model(self, model: CatalogEntry | None) -> CatalogEntry:
        model = model or self.shipped_model()
        if model is None:
            raise InputError(f"no {self.title} model is shipped: train one (samprostate train --method {self.id}, or the "
                             "Slicer Training tab) and choose it under Trained model")
        if model.kind != self.model_kind:
            raise InputError(f"{model.title} is a {model.kind} model; {self.title} needs a {self.model_kind} model")
        return model

    def evaluation_rows(self, base: ProstateSegmenter, model: CatalogEntry | None = None) -> dict[str, Predictor]:
        """Its rows in ``samprostate evaluate`` with ``model`` (default: the shipped one): title -> prediction (one row,
        unless a method compares variants)."""
        loaded = self.load(base, model)
        return {self.row_title or self.title: lambda volume, _: loaded.labels(volume)}

    def trainer(self, base: ProstateSegmenter) -> FineTuningMethod:
        raise InputError(f"{self.id} is not trained with samprostate train")

    def provenance(self, sam_checkpoint: Path | None = None, coarse_checkpoint: Path | None = None,
                   model: CatalogEntry | None = None) -> Provenance:
        """The model files a run of this method uses (a user's checkpoint is hashed here; ``model``: a trained model
        in place of the shipped one)."""
        from ..io.provenance import ModelFile, Provenance, model_file

        models = [model_file("sam", sam_checkpoint, default_entry("sam"))]
        if self.takes_boxes:
            models.append(model_file("coarse", coarse_checkpoint, default_entry("coarse")))
        model = model or self.shipped_model()
        if model is not None:
            models.append(ModelFile("method", model.id, model.sha256))
        return Provenance(self.id, self.title, tuple(models))


class MethodSegmenter:
    """A method with its models loaded, ready for any number of volumes."""

    def __init__(self, method: Method, base: ProstateSegmenter):
        self.method = method
        self.base = base

    def segment(self, volume: PreparedVolume, boxes: dict[int, Box] | None = None, points: dict[int, list] | None = None) -> Segmentation:
        """Labels of ``volume``: inside ``boxes`` (default: proposed) for a box-prompted method, with each slice's
        ``points`` (``masks.clicks.Click`` in order) replayed on its box."""
        raise NotImplementedError

    def labels(self, volume: PreparedVolume) -> np.ndarray:
        """The labels ``segment`` gives with the proposed boxes (where nothing reads the confidences; a method whose
        confidences cost work of their own skips them here)."""
        return self.segment(volume).labels

    def session(self, volume: PreparedVolume) -> BoxSegmentation:
        """An editable box session on ``volume`` (what the Slicer module keeps per volume)."""
        from ..pipeline.segmenter import BoxSegmentation

        return BoxSegmentation(volume, self.base.sam, self.base.options.z_smoothing_mm)

    def confidences(self, session: BoxSegmentation) -> dict[int, SliceConfidence]:
        """Each segmented slice's confidence in ``session`` (``masks.confidence``), and that of the slices just past them:
        with SAM's predicted IoU of each box for a box-prompted method, without for one that prompts itself."""
        return self.base.slice_confidence(session.volume, session.labels, session.predicted_iou if self.method.takes_boxes else None)


class BoxPromptedSegmenter(MethodSegmenter):
    """SAM segments inside one box per slice: the coarse network's boxes, or the user's."""

    def __init__(self, method: Method, base: ProstateSegmenter, merge_slices: bool = False):
        super().__init__(method, base)
        self.merge_slices = merge_slices

    def segment(self, volume: PreparedVolume, boxes: dict[int, Box] | None = None, points: dict[int, list] | None = None) -> Segmentation:
        boxes = self.base.propose_boxes(volume) if boxes is None else boxes
        if self.merge_slices:
            from ..masks.z_smoothing import neighbour_weights
            from ..modeling.tiling import segment_merged

            weights = neighbour_weights(volume.image.GetSpacing()[2], self.base.options.z_smoothing_mm)
            labels, predicted_iou = segment_merged(self.base.sam, volume.normalised, boxes, weights=weights)
            return Segmentation(labels, boxes, self.base.slice_confidence(volume, labels, predicted_iou))
        session = self.base.box_session(volume, boxes)
        if points:
            from ..modeling.sam_engine import Prompt

            for index, clicks in sorted(points.items()):
                box = boxes[index].as_tuple() if index in boxes else None
                session.refine_slice(index, Prompt(box, tuple((click.x, click.y) for click in clicks), tuple(click.label for click in clicks)))
        return Segmentation(session.labels, dict(session.boxes), self.confidences(session))  # with the start box of a clicked slice


class SelfPromptingSegmenter(MethodSegmenter):
    """A model that prompts itself on every slice (``segment_volume``); its labels kept to their largest 3D component."""

    def __init__(self, method: Method, base: ProstateSegmenter, model):
        super().__init__(method, base)
        self.model = model

    def segment(self, volume: PreparedVolume, boxes: dict[int, Box] | None = None, points: dict[int, list] | None = None) -> Segmentation:
        if boxes is not None or points:
            raise InputError(f"{self.method.id} prompts itself; boxes work with {' and '.join(box_method_ids())}")
        labels = self.labels(volume)
        return Segmentation(labels, confidences=self.base.slice_confidence(volume, labels))

    def labels(self, volume: PreparedVolume) -> np.ndarray:
        """Its labels alone: the coarse network, which only the confidences need, does not run."""
        from ..masks.boxes import largest_component

        labels = self.model.segment_volume(volume)
        labels[~largest_component(labels > 0)] = 0
        return labels


_REGISTERED: dict[str, Method] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: add one instance of the method to the registry."""
    _REGISTERED[cls.id] = cls()
    return cls


@lru_cache(maxsize=1)
def methods() -> dict[str, Method]:
    """Every method, by id, in menu order (the modules of this package are imported once)."""
    for module in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if not module.ispkg and module.name != "registry":
            importlib.import_module(f"{__package__}.{module.name}")
    return dict(sorted(_REGISTERED.items(), key=lambda item: item[1].order))


def method(method_id: str) -> Method:
    if method_id not in methods():
        raise InputError(f"unknown method {method_id!r}; choose one of {', '.join(methods())}")
    return methods()[method_id]


def runnable_methods() -> dict[str, Method]:
    """The methods that can segment with what is installed: those that need no trained model or have a shipped one."""
    return {key: item for key, item in methods().items() if item.model_kind is None or item.shipped_model() is not None}


def box_method_ids() -> list[str]:
    return [item.id for item in methods().values() if item.takes_boxes]


def trainable_methods() -> dict[str, Method]:
    return {key: item for key, item in methods().items() if item.training is not None}


def training_defaults() -> dict[str, TrainingDefaults]:
    """Each trainable method's training defaults, by key (as ``trainable_methods``)."""
    return {key: item.training for key, item in methods().items() if item.training is not None}


def method_for_model_kind(kind: str) -> Method | None:
    """The method whose trained model has this catalog kind (None for a coarse network)."""
    return next((item for item in methods().values() if item.model_kind == kind), None)
