"""What ``evaluate --clicks`` and ``evaluate --shifts`` read before MONAI and the models load (``click_evaluation`` and
``robustness`` run them)."""

from __future__ import annotations

from ..core.catalog import INTERACTIVE_KIND
from ..core.errors import InputError
from ..methods.registry import method_for_model_kind
from .training_process import trained_model_file

CLICK_SPLITS = ("unseen", "source-extra")
SUITE_SPLITS = ("source-extra", "unseen")  # the robustness suite's cases


def check_click_options(arguments) -> None:
    """``--clicks`` and ``--interactive-decoder``, before any model loads."""
    if arguments.clicks is None:
        if arguments.interactive_decoder is not None:
            raise InputError("--interactive-decoder goes with --clicks")
        return
    if arguments.clicks < 0:
        raise InputError(f"--clicks must be 0 or more, not {arguments.clicks}")
    if arguments.shifts:
        raise InputError("--clicks and --shifts are two separate evaluations; run them one at a time")
    if arguments.method_model is not None:
        raise InputError("--clicks takes a trained click decoder from --interactive-decoder, not --method-model")
    if arguments.method is not None:
        raise InputError("--clicks compares clicks as box edits (SAM zero-shot) with the click decoder; it takes no --method "
                         "(--interactive-decoder chooses the decoder)")
    trained_for = method_for_model_kind(INTERACTIVE_KIND)  # the method whose training writes click decoders
    arguments.interactive_decoder_entry = trained_model_file(arguments.interactive_decoder, None if trained_for is None else trained_for.id, "--interactive-decoder")
