"""SAMMed (Wang et al. 2024): the coarse network's filtered boxes prompt SAM, whose mask decoder was fine-tuned on the source site."""

from __future__ import annotations

from ..training.defaults import TrainingDefaults
from .registry import BoxPromptedSegmenter, Method, MethodOptions, register


@register
class SAMMed(Method):
    id = "sammed"
    title = "SAMMed: decoder fine-tuned on RUNMC"
    row_title = f"{title} + filtered boxes"
    short_title = "SAMMed mask decoder"
    scene_name = "sammed"
    order = 1
    takes_boxes = True
    model_kind = "decoder"
    training = TrainingDefaults(8, 1e-4, 8)

    def load(self, base, model=None, options: MethodOptions = MethodOptions()) -> BoxPromptedSegmenter:
        model = self._model(model)
        return BoxPromptedSegmenter(self, base.with_decoder(model.path, model.sha256), options.merge_slices)

    def trainer(self, base):
        from .trainers.sammed import SamMedMethod

        return SamMedMethod(base.sam, base.options)
