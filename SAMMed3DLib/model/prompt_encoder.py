"""Prompt encoder: points and a 32^3 mask prompt -> sparse and dense embeddings for the mask decoder."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import nn

from SAMMed3DLib.model.common import LayerNorm3d


class PositionEmbeddingRandom3D(nn.Module):
    """Random-Fourier encoding of normalised coordinates: [sin, cos, sin] of 2*pi*(2c - 1) @ gaussian.

    The gaussian matrix is a persistent buffer, so every checkpoint carries its own.
    """

    def __init__(self, num_pos_feats: int) -> None:
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn((3, num_pos_feats)))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """(..., 3) coordinates in [0, 1] -> (..., 3 * num_pos_feats), in float32 whatever the model's dtype."""
        projected = 2 * math.pi * ((2 * coords.float() - 1) @ self.positional_encoding_gaussian_matrix.float())
        sine = torch.sin(projected)
        return torch.cat([sine, torch.cos(projected), sine], dim=-1)

    def dense(self, size: Tuple[int, int, int]) -> torch.Tensor:
        """Encoding of every cell centre of a grid, (C, X, Y, Z).

        The reference swaps the first two axes here relative to point encoding: cell (i, j, k) is encoded as the
        point ((j + 0.5) / Y, (i + 0.5) / X, (k + 0.5) / Z). The decoder was trained with it, so it is kept.
        """
        matrix = self.positional_encoding_gaussian_matrix
        centres = [(torch.arange(n, device=matrix.device, dtype=matrix.dtype) + 0.5) / n for n in size]
        along_0, along_1, along_2 = torch.meshgrid(*centres, indexing="ij")
        return self.encode(torch.stack([along_1, along_0, along_2], dim=-1)).permute(3, 0, 1, 2)


class PromptEncoder3D(nn.Module):
    def __init__(
        self,
        embed_dim: int,
        image_embedding_size: Tuple[int, int, int],
        input_image_size: Tuple[int, int, int],
        mask_in_chans: int,
        num_point_embeddings: int = 2,
    ) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = image_embedding_size
        self.input_image_size = input_image_size
        self.pe_layer = PositionEmbeddingRandom3D(embed_dim // 3)
        # 0: exclude point, 1: include point; box-capable checkpoints add 2, 3 for box corners.
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(num_point_embeddings))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv3d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv3d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm3d(mask_in_chans),
            nn.GELU(),
            nn.Conv3d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def dense_positional_encoding(self) -> torch.Tensor:
        """(1, C, 8, 8, 8): the positional encoding of the image embedding's cells."""
        return self.pe_layer.dense(self.image_embedding_size).unsqueeze(0)

    def embed_points(self, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, N, 3) voxel coordinates and (B, N) labels -> (B, N + 1, C).

        As in the reference: coordinates shift to voxel centres, one "not a point" is appended (no box is given),
        and label -1 replaces the positional encoding by `not_a_point_embed`.
        """
        padding = torch.zeros_like(points[:, :1])
        coords = torch.cat([points + 0.5, padding], dim=1)
        labels = torch.cat([labels, torch.full_like(labels[:, :1], -1)], dim=1).unsqueeze(-1)
        size = torch.tensor(self.input_image_size, dtype=coords.dtype, device=coords.device)
        encoding = self.pe_layer.encode(coords / size).to(self.not_a_point_embed.weight.dtype)
        encoding = torch.where(labels == -1, self.not_a_point_embed.weight, encoding)
        encoding = encoding + (labels == 0) * self.point_embeddings[0].weight
        return encoding + (labels == 1) * self.point_embeddings[1].weight

    def embed_mask(self, mask_logits: Optional[torch.Tensor], batch: int) -> torch.Tensor:
        """(B, 1, 32, 32, 32) logits -> (B, C, 8, 8, 8); None -> the (untrained) `no_mask_embed` everywhere."""
        if mask_logits is not None:
            return self.mask_downscaling(mask_logits)
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1, 1).expand(batch, -1, *self.image_embedding_size)
