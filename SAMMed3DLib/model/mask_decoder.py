"""Mask decoder: image embedding + prompt embeddings -> 32^3 mask logits and predicted IoU."""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from SAMMed3DLib.model.common import MLP, LayerNorm3d
from SAMMed3DLib.model.transformer import TwoWayTransformer3D


class MaskDecoder3D(nn.Module):
    def __init__(
        self,
        transformer_dim: int,
        transformer_depth: int,
        transformer_heads: int,
        transformer_mlp_dim: int,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer = TwoWayTransformer3D(
            transformer_depth, transformer_dim, transformer_heads, transformer_mlp_dim
        )
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose3d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm3d(transformer_dim // 4),
            nn.GELU(),
            nn.ConvTranspose3d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embedding: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_embedding: torch.Tensor,
        dense_embedding: torch.Tensor,
        multimask: bool = False,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, C, 32, 32, 32) and IoU (B, C): C = 1 (mask token 0), or 3 (tokens 1..3) with `multimask`."""
        batch = sparse_embedding.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse_embedding], dim=1)
        source = image_embedding + dense_embedding
        image_pe = image_pe.expand(batch, -1, -1, -1, -1)
        channels, size = source.shape[1], source.shape[2:]

        tokens, image_tokens = self.transformer(source, image_pe, tokens)
        iou_token, mask_tokens = tokens[:, 0], tokens[:, 1 : 1 + self.num_mask_tokens]
        upscaled = self.output_upscaling(image_tokens.transpose(1, 2).reshape(batch, channels, *size))
        hyper_in = torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        logits = (hyper_in @ upscaled.flatten(2)).reshape(batch, -1, *upscaled.shape[2:])
        iou = self.iou_prediction_head(iou_token)
        chosen = slice(1, None) if multimask else slice(0, 1)
        return logits[:, chosen], iou[:, chosen]
