"""SAMed (Zhang & Liu 2023): LoRA in SAM's image encoder plus a fine-tuned prompt encoder and decoder, prompt-free, zonal labels."""

from __future__ import annotations

from ..training.defaults import TrainingDefaults
from .registry import ZONE_SEGMENTS, Method, MethodOptions, SelfPromptingSegmenter, register


@register
class SAMed(Method):
    id = "samed"
    title = "SAMed: LoRA encoder + decoder, zonal, trained on RUNMC"
    short_title = "SAMed, LoRA (zonal)"
    scene_name = "samed"
    order = 4
    segments = ZONE_SEGMENTS
    model_kind = "samed"
    training = TrainingDefaults(2, 1e-3, 2)

    def load(self, base, model=None, options: MethodOptions = MethodOptions()) -> SelfPromptingSegmenter:
        from ..modeling.samed import SAMedSegmenter, load_samed

        model = self._model(model)
        return SelfPromptingSegmenter(self, base, SAMedSegmenter(base.sam, load_samed(base.sam.sam, model.path, model.sha256)))

    def trainer(self, base):
        from .trainers.samed import SAMedMethod

        return SAMedMethod(base.sam)
