"""Click-to-segment: SAM's prompt encoder and a copy of its mask decoder taught clicks and the fed-back previous mask,
a box alone decoded as LiteMedSAM does (``modeling.interactive``); the coarse network's boxes start it, clicks are points."""

from __future__ import annotations

from ..core.catalog import INTERACTIVE_KIND
from ..training.defaults import TrainingDefaults
from .registry import BoxPromptedSegmenter, Method, MethodOptions, register


@register
class Interactive(Method):
    id = "interactive"
    title = "Interactive decoder (box + clicks), trained on RUNMC"
    short_title = "Interactive decoder (clicks)"
    scene_name = "interactive"
    order = 5
    takes_boxes = True
    takes_points = True
    model_kind = INTERACTIVE_KIND
    training = TrainingDefaults(12, 1e-3, 2)  # the prompt embeddings' rate (the click decoder: a tenth); up to 4 decoder passes per sample

    def load(self, base, model=None, options: MethodOptions = MethodOptions()) -> BoxPromptedSegmenter:
        from ..modeling.interactive import InteractiveDecoder, InteractiveEngine
        from ..pipeline.segmenter import ProstateSegmenter

        model = self._model(model)
        engine = InteractiveEngine(base.sam, InteractiveDecoder.from_checkpoint(base.sam.sam, model.path, model.sha256))
        return BoxPromptedSegmenter(self, ProstateSegmenter(engine, base.coarse, base.options, base.coarse_options), options.merge_slices)

    def trainer(self, base):
        from .trainers.interactive import InteractiveMethod

        return InteractiveMethod(base.sam, base.options)
