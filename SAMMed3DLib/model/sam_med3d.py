"""SamMed3D: the whole network, built from a configuration of `config`."""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import torch
from torch import nn

from SAMMed3DLib.model.config import VARIANTS, SamMed3DConfig
from SAMMed3DLib.model.image_encoder import ImageEncoder3D
from SAMMed3DLib.model.mask_decoder import MaskDecoder3D
from SAMMed3DLib.model.prompt_encoder import PromptEncoder3D


class SamMed3D(nn.Module):
    """Image encoder, prompt encoder and mask decoder, with the reference's state-dict names."""

    def __init__(self, config: SamMed3DConfig) -> None:
        super().__init__()
        self.config = config
        grid = config.image_size // config.patch_size
        self.image_encoder = ImageEncoder3D(
            img_size=config.image_size,
            patch_size=config.patch_size,
            embed_dim=config.encoder_dim,
            depth=config.encoder_depth,
            num_heads=config.encoder_heads,
            mlp_ratio=config.encoder_mlp_ratio,
            out_chans=config.prompt_dim,
            window_size=config.encoder_window_size,
            global_attn_indexes=config.encoder_global_attn_indexes,
        )
        self.prompt_encoder = PromptEncoder3D(
            embed_dim=config.prompt_dim,
            image_embedding_size=(grid, grid, grid),
            input_image_size=(config.image_size,) * 3,
            mask_in_chans=config.mask_in_chans,
            num_point_embeddings=config.num_point_embeddings,
        )
        self.mask_decoder = MaskDecoder3D(
            transformer_dim=config.prompt_dim,
            transformer_depth=config.decoder_depth,
            transformer_heads=config.decoder_heads,
            transformer_mlp_dim=config.decoder_mlp_dim,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        )

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, 128, 128, 128) normalised patch -> (B, prompt_dim, 8, 8, 8) image embedding."""
        return self.image_encoder(image)

    def decode(
        self,
        embedding: torch.Tensor,
        points: Optional[torch.Tensor],
        labels: Optional[torch.Tensor],
        mask_logits: Optional[torch.Tensor] = None,
        multimask: bool = False,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mask logits (B, C, 32, 32, 32) and predicted IoU (B, C), C = 3 with `multimask`, else 1.

        `points` (B, N, 3) are voxel coordinates of the 128^3 patch in the patch tensor's axis order, `labels` (B, N)
        1 include, 0 exclude, -1 ignore. Give the previous round's logits as `mask_logits`, and an all-zero mask on
        the first round: that is how the model was trained ("no mask" was not). `points=None` (and `labels=None`)
        decodes from the mask prompt alone, with no point tokens at all, as training's mask-only steps do.
        """
        batch = embedding.shape[0]
        if points is None:
            sparse = embedding.new_zeros(batch, 0, self.prompt_encoder.embed_dim)
        else:
            sparse = self.prompt_encoder.embed_points(points, labels)
        dense = self.prompt_encoder.embed_mask(mask_logits, batch)
        image_pe = self.prompt_encoder.dense_positional_encoding().to(embedding.dtype)
        return self.mask_decoder(embedding, image_pe, sparse.to(embedding.dtype), dense, multimask)


def build_sam_med3d(variant: str = "vit_b_ori", **overrides: object) -> SamMed3D:
    """A SamMed3D of a named configuration (`VARIANTS`), with randomly initialised weights.

    `overrides` replace single configuration fields, e.g. `num_point_embeddings=4` for box-capable checkpoints.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown SAM-Med3D variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    return SamMed3D(dataclasses.replace(VARIANTS[variant], **overrides))
