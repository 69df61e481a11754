"""SAM image encoders split into a frozen stem and an attention trunk that also yields skip features.

DeSAM's mask module fuses intermediate encoder features with the decoder's mask embeddings, and
SAMed adapts every attention block with LoRA. Both need the encoder in stages:

- TinyViT (LiteMedSAM): the stem is the patch embedding and the convolutional first
  stage (no attention); the skips are that stage's output (128 px) and the second stage's (64 px).
- ViT (SAM vit_b/l/h): the stem is the patch embedding; the skips are the outputs of the
  global-attention blocks before the last, all at the embedding's 64 px.

Channels and sizes are read from the encoder, never assumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from segment_anything.modeling import ImageEncoderViT, Sam


@dataclass
class EncoderFeatures:
    """The image embedding [B, 256, 64, 64] and intermediate stage outputs [B, C, H, W], largest first."""

    embedding: torch.Tensor
    skips: list[torch.Tensor]

    def slices(self, indices: list[int]) -> EncoderFeatures:
        """The features of some of the slices."""
        return EncoderFeatures(self.embedding[indices], [skip[indices] for skip in self.skips])


class EncoderStages:
    """``features(images) == trunk(stem(images))``; the stem holds no attention block."""

    def __init__(self, sam: Sam):
        self.encoder = sam.image_encoder
        self.embedding_side = sam.prompt_encoder.image_embedding_size[0]
        self.is_vit = isinstance(self.encoder, ImageEncoderViT)

    def stem(self, images: torch.Tensor) -> torch.Tensor:
        """Preprocessed images [B, 3, S, S] → the input of the first attention block."""
        if self.is_vit:
            tokens = self.encoder.patch_embed(images)
            return tokens if self.encoder.pos_embed is None else tokens + self.encoder.pos_embed
        return self.encoder.layers[0](self.encoder.patch_embed(images))

    def trunk(self, stem: torch.Tensor) -> EncoderFeatures:
        if self.is_vit:
            return self._vit_trunk(stem)
        skips, tokens = [_token_map(stem)], stem
        for index, layer in enumerate(self.encoder.layers[1:], start=1):
            tokens = layer(tokens)
            if index == 1:
                skips.append(_token_map(tokens))
        return EncoderFeatures(self.encoder.neck(_token_map(tokens)), skips)

    def features(self, images: torch.Tensor) -> EncoderFeatures:
        return self.trunk(self.stem(images))

    def stem_from_skips(self, skips: list[torch.Tensor]) -> torch.Tensor:
        """TinyViT's stem output is its first skip feature: training can start from cached skips."""
        if self.is_vit:
            raise ValueError("a ViT encoder's stem is not among its skip features")
        first = skips[0]
        return first.flatten(2).transpose(1, 2)

    def skip_channels(self) -> list[int]:
        if self.is_vit:
            width = self.encoder.patch_embed.proj.out_channels
            return [width] * len(self._vit_skip_blocks())
        return [_out_channels(self.encoder.layers[0]), _out_channels(self.encoder.layers[1])]

    def skip_scales(self) -> list[int]:
        """Each skip feature's side as a multiple of the embedding's."""
        if self.is_vit:
            return [1] * len(self._vit_skip_blocks())
        return [self.encoder.layers[index].input_resolution[0] // self.embedding_side for index in (1, 2)]

    def _vit_skip_blocks(self) -> list[int]:
        global_blocks = [index for index, block in enumerate(self.encoder.blocks) if block.window_size == 0]
        return global_blocks[:-1]

    def _vit_trunk(self, tokens: torch.Tensor) -> EncoderFeatures:
        wanted, skips = set(self._vit_skip_blocks()), []
        for index, block in enumerate(self.encoder.blocks):
            tokens = block(tokens)
            if index in wanted:
                skips.append(tokens.permute(0, 3, 1, 2))
        return EncoderFeatures(self.encoder.neck(tokens.permute(0, 3, 1, 2)), skips)


def _token_map(tokens: torch.Tensor) -> torch.Tensor:
    """TinyViT tokens [B, H·W, C] (square) → feature map [B, C, H, W]."""
    batch, count, channels = tokens.shape
    side = int(round(count**0.5))
    return tokens.transpose(1, 2).reshape(batch, channels, side, side)


def _out_channels(layer: torch.nn.Module) -> int:
    """A TinyViT stage's output width: its downsampling's, or its blocks' when it keeps the size."""
    stage = cast(Any, layer)  # TinyViT's BasicLayer / ConvLayer (no type information)
    return stage.dim if stage.downsample is None else stage.downsample.out_dim
