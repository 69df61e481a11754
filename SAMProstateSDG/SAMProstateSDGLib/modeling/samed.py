"""SAMed: prompt-free zonal segmentation with LoRA in SAM's image encoder (Zhang & Liu 2023).

Rank-4 LoRA adds trainable low-rank updates to the query and value projections of every
attention block of the frozen encoder; the prompt encoder and mask decoder are fine-tuned. With
no prompt, the decoder's three multimask outputs become the logits of background, transition
zone (label 1) and peripheral zone (label 2).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, cast

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.modeling.image_encoder import Attention as VitAttention
from torch import nn

from ..core.checksums import load_trained_weights
from .encoder_stages import EncoderStages
from .sam_engine import SamEngine

LORA_RANK = 4
ZONE_CLASSES = 3  # background, transition zone, peripheral zone


class LoRAQKV(nn.Module):
    """A frozen fused qkv projection plus trainable low-rank updates of its query and value outputs."""

    query_outputs: torch.Tensor  # buffers (register_buffer)
    value_outputs: torch.Tensor

    def __init__(self, qkv: nn.Linear, query_outputs: torch.Tensor, value_outputs: torch.Tensor, rank: int = LORA_RANK):
        super().__init__()
        self.qkv = qkv
        self.query_down, self.query_up = nn.Linear(qkv.in_features, rank, bias=False), nn.Linear(rank, len(query_outputs), bias=False)
        self.value_down, self.value_up = nn.Linear(qkv.in_features, rank, bias=False), nn.Linear(rank, len(value_outputs), bias=False)
        nn.init.zeros_(self.query_up.weight)  # starts as the base model exactly
        nn.init.zeros_(self.value_up.weight)
        self.register_buffer("query_outputs", query_outputs, persistent=False)
        self.register_buffer("value_outputs", value_outputs, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = x.new_zeros(*x.shape[:-1], self.qkv.out_features)
        update[..., self.query_outputs] = self.query_up(self.query_down(x))
        update[..., self.value_outputs] = self.value_up(self.value_down(x))
        return self.qkv(x) + update


def _query_value_outputs(attention: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Which qkv output features are queries and which are values, in this attention's layout."""
    if isinstance(attention, VitAttention):  # [q | k | v], each all heads
        width = attention.qkv.in_features
        return torch.arange(width), torch.arange(2 * width, 3 * width)
    # TinyViT: per head [q (key_dim) | k (key_dim) | v (d)]
    tiny: Any = attention  # TinyViT's Attention (no type information): ints key_dim, d, num_heads
    block = 2 * tiny.key_dim + tiny.d
    starts = torch.arange(tiny.num_heads)[:, None] * block
    return (starts + torch.arange(tiny.key_dim)).ravel(), (starts + 2 * tiny.key_dim + torch.arange(tiny.d)).ravel()


def add_lora(encoder: nn.Module, rank: int = LORA_RANK) -> nn.ModuleList:
    """Wrap the qkv projection of every attention block of ``encoder``; returns the LoRA layers."""
    attentions = [module for module in encoder.modules() if hasattr(module, "qkv") and isinstance(module.qkv, nn.Linear)]
    layers = []
    for attention in attentions:
        attention.qkv = LoRAQKV(cast(nn.Linear, attention.qkv), *_query_value_outputs(attention), rank)
        layers.append(attention.qkv)
    return nn.ModuleList(layers)


class SAMed(nn.Module):
    """A copy of SAM with LoRA in its encoder; ``state_dict`` holds only what SAMed trains."""

    def __init__(self, base: Sam, rank: int = LORA_RANK):
        super().__init__()
        sam = copy.deepcopy(base)
        sam.requires_grad_(False)
        lora = add_lora(sam.image_encoder, rank)
        self.image_encoder, self.prompt_encoder, self.mask_decoder = sam.image_encoder, sam.prompt_encoder, sam.mask_decoder
        for layer in lora:
            for adapter in (layer.query_down, layer.query_up, layer.value_down, layer.value_up):
                adapter.requires_grad_(True)
        self.prompt_encoder.requires_grad_(True)
        self.mask_decoder.requires_grad_(True)
        self.stages = EncoderStages(sam)

    def train(self, mode: bool = True) -> SAMed:
        """Training mode for what learns; the frozen encoder's batch norms keep their stored statistics."""
        super().train(mode)
        self.image_encoder.eval()
        return self

    def state_dict(self, *args, **kwargs):
        """The LoRA adapters, prompt encoder and mask decoder; never the frozen encoder weights."""
        return {name: value for name, value in super().state_dict(*args, **kwargs).items() if _is_trained(name)}

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        if strict and set(state_dict) != set(self.state_dict()):
            raise RuntimeError("SAMed checkpoint keys do not match this SAM")
        return super().load_state_dict(state_dict, strict=False, assign=assign)

    def zone_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Prompt-free low-resolution logits [B, 3, 4h, 4w] of background, TZ and PZ."""
        sparse, dense = self.prompt_encoder(points=None, boxes=None, masks=None)
        logits, _ = self.mask_decoder(
            image_embeddings=embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )
        return logits


def _is_trained(name: str) -> bool:
    return not name.startswith("image_encoder.") or name.endswith(("_down.weight", "_up.weight"))


class SAMedSegmenter:
    """Zonal labels of grey slices from a SAMed model."""

    def __init__(self, engine: SamEngine, model: SAMed):
        self.engine, self.model = engine, model.to(engine.device)

    @torch.no_grad()
    def probabilities_from_stems(self, stems: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
        """Class probabilities [B, 3, rows, columns] of slices of ``shape`` from their stem outputs."""
        logits = self.model.zone_logits(self.model.stages.trunk(stems).embedding)
        return self.engine.sam.postprocess_masks(logits, self.engine.input_size(shape), shape).softmax(1)

    def labels_from_stems(self, stems: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
        return self.probabilities_from_stems(stems, shape).argmax(1).to(torch.uint8).cpu().numpy()

    def segment_volume(self, volume) -> np.ndarray:
        """Zonal labels (0, 1 TZ, 2 PZ) of every slice of a pipeline.PreparedVolume, on its own grid."""
        slices = volume.on_canvas()
        with torch.no_grad():
            probabilities = torch.cat(
                [self.probabilities_from_stems(self.model.stages.stem(batch), slices.shape[1:]) for batch in self.engine.encoder_inputs(slices)]
            ).cpu().numpy()
        on_volume_grid = np.stack([volume.from_canvas(probabilities[:, label]) for label in range(probabilities.shape[1])], axis=1)
        return on_volume_grid.argmax(1).astype(np.uint8)


def load_samed(sam: Sam, checkpoint, sha256: str | None = None) -> SAMed:
    """A SAMed copy of this SAM with trained LoRA, prompt encoder and decoder weights (strict keys)."""
    return load_trained_weights(SAMed(sam), checkpoint, "SAMed", sha256)
