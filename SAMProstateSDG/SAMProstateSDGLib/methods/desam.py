"""DeSAM (Gao et al. 2023): SAM's decoder decoupled into a prompt-relevant IoU module and a prompt-invariant
mask module, prompted automatically by a grid of points or by the whole slice."""

from __future__ import annotations

from ..core.catalog import DEFAULT_GRID_SIDE
from ..training.defaults import TrainingDefaults
from .registry import Method, MethodOptions, SelfPromptingSegmenter, register

EVALUATED_GRID_SIDES = (1, 3, 5, DEFAULT_GRID_SIDE)  # 1, 9, 25 and 81 points


class DeSAMVariant(Method):
    mode: str  # "grid" or "box", as modeling.desam.DESAM_MODES

    def load(self, base, model=None, options: MethodOptions = MethodOptions()) -> SelfPromptingSegmenter:
        from ..modeling.desam import DeSAMSegmenter, load_desam

        model = self._model(model)
        desam = load_desam(base.sam.sam, model.path, model.sha256)
        return SelfPromptingSegmenter(self, base, DeSAMSegmenter(base.sam, desam, self.mode, options.grid_side))

    def trainer(self, base):
        from .trainers.desam import DeSAMMethod

        return DeSAMMethod(base.sam, self.mode)


@register
class DeSAMGrid(DeSAMVariant):
    id = "desam-grid"
    title = "DeSAM grid points, trained on RUNMC"
    short_title = "DeSAM, grid points"
    scene_name = "desamGrid"
    order = 2
    mode = "grid"
    model_kind = "desam-grid"
    training = TrainingDefaults(6, 3e-4, 4)  # two prompts per slice: 8 prompts a step

    def evaluation_rows(self, base, model=None) -> dict:
        rows = {}
        for side in EVALUATED_GRID_SIDES:
            loaded = self.load(base, model, MethodOptions(grid_side=side))
            rows[f"{self.title}: {side * side} point{'s' * (side > 1)}"] = lambda volume, _, loaded=loaded: loaded.labels(volume)
        return rows


@register
class DeSAMBox(DeSAMVariant):
    id = "desam-box"
    title = "DeSAM whole-slice box, trained on RUNMC"
    short_title = "DeSAM, whole-slice box"
    scene_name = "desamBox"
    order = 3
    mode = "box"
    model_kind = "desam-box"
    training = TrainingDefaults(6, 3e-4, 8)
