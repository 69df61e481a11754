"""SAM zero-shot: the coarse network's boxes prompt the base SAM (LiteMedSAM by default)."""

from __future__ import annotations

from .registry import BoxPromptedSegmenter, Method, MethodOptions, register


@register
class ZeroShot(Method):
    id = "zero-shot"
    title = "SAM zero-shot"
    short_title = "SAM zero-shot"
    scene_name = "zeroShot"
    order = 0
    takes_boxes = True

    def load(self, base, model=None, options: MethodOptions = MethodOptions()) -> BoxPromptedSegmenter:
        if model is not None:
            raise ValueError("SAM zero-shot has no trained model of its own")
        return BoxPromptedSegmenter(self, base, options.merge_slices)

    def evaluation_rows(self, base, model=None) -> dict:
        """The box-proposal ablation: the coarse mask alone, three component filters, ground-truth and whole-slice boxes."""
        import dataclasses

        from ..masks.boxes import COARSE_THRESHOLD, ComponentFilter, boxes_from_labels, whole_slice_boxes

        def with_filter(component_filter: ComponentFilter):
            variant = dataclasses.replace(base.options, component_filter=component_filter)
            return lambda volume, _: base.segment_with_boxes(volume, base.propose_boxes(volume, variant))

        return {
            f"Coarse net alone (p > {COARSE_THRESHOLD})": lambda volume, _: (base.coarse_probabilities(volume) > base.options.threshold).astype("uint8"),
            "SAM + coarse boxes, unfiltered": with_filter(ComponentFilter.NONE),
            "SAM + filtered boxes, largest component per slice (SAMMed)": with_filter(ComponentFilter.SLICE),
            "SAM + filtered boxes, largest 3D component (ours, default)": with_filter(ComponentFilter.VOLUME),
            "SAM + ground-truth boxes (upper bound)": lambda volume, labels: base.segment_with_boxes(volume, boxes_from_labels(labels > 0)),
            "SAM + whole-image box, every slice": lambda volume, _: base.segment_with_boxes(volume, whole_slice_boxes(volume.normalised.shape)),
        }
