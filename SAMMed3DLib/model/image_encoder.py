"""ViT image encoder: a 128^3 patch -> (B, 384, 8, 8, 8) embedding.

The reference pads the 8^3 token grid of its window blocks to one 14^3 window and attends over all 2744 tokens.
The 2232 padded tokens are zeros after `norm1`, so they all share one key and one value (the qkv bias); only their
relative-position bias differs. `RelPosAttention` sums their contribution in closed form and attends with 512 real
keys plus one "padding" key that carries it, which gives the reference's numbers at a fraction of its cost.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from SAMMed3DLib.model.common import LayerNorm3d, MLPBlock


class PatchEmbed3D(nn.Module):
    """Non-overlapping 16^3 patches -> tokens, channels last."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 4, 1)


class RelPosAttention(nn.Module):
    """Multi-head self-attention over a G^3 token grid with the reference's decomposed relative-position bias.

    `grid_size` S is the grid the attention runs on in the reference: G for global blocks, the window size (14) for
    window blocks, where the G^3 real tokens sit in the corner of a zero-padded S^3 window. For query (a, b, c) and
    key (x, y, z) the reference's bias is (its broadcast is not the textbook one; this is what the weights learned)

        Q[a,b,c]·Pd[a-z] + Q[a,b,x]·Ph[b-z] + Q[a,b,y]·Pw[y-z],   P*[t] = rel_pos_*[t + S - 1],

    with Q[p] the unscaled query of the token at p (the q bias at padded positions). Outputs at padded positions are
    dropped by the reference, so only the G^3 real queries are computed here.
    """

    def __init__(self, dim: int, num_heads: int, grid_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.grid_size = grid_size
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_d = nn.Parameter(torch.zeros(2 * grid_size - 1, self.head_dim))
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid_size - 1, self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid_size - 1, self.head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, grid = x.shape[0], x.shape[1]
        heads, head_dim, size = self.num_heads, self.head_dim, self.grid_size
        if grid > size:
            raise ValueError(f"token grid {grid} is larger than the attention window {size}")
        tokens, padded = grid**3, grid < size
        # (B, G, G, G, 3*C) -> 3 x (B, heads, G, G, G, head_dim)
        q, k, v = self.qkv(x).reshape(batch, grid, grid, grid, 3, heads, head_dim).permute(4, 0, 5, 1, 2, 3, 6)
        term_d, term_h, term_w = self._relative_position_terms(q)

        # Every bias term enters the Q·K product as a pair of features, so that attention needs no mask:
        #   q·k * scale                 <- q * scale           with k
        #   Q[a,b,c]·Pd[a-z]            <- term_d (per z)      with a one-hot of the key's z
        #   Q[a,b,x]·Ph[b-z] + Q[a,b,y]·Pw[y-z]  <- a one-hot of the query's (a, b) with that sum for the key
        #   log of the padded keys' summed exp-bias  <- its value  with 1 on the padding key
        row_of_query = torch.arange(tokens, device=x.device) // grid
        one_hot_rows = (row_of_query[:, None] == torch.arange(grid * grid, device=x.device)).to(q.dtype)
        z_of_key = torch.arange(tokens, device=x.device) % grid
        one_hot_z = (z_of_key[:, None] == torch.arange(grid, device=x.device)).to(q.dtype)
        per_row = (term_h[..., :grid, None, :grid] + term_w[..., None, :grid, :grid]).reshape(
            batch, heads, grid * grid, tokens
        )
        query_parts = [q * self.scale, term_d[..., :grid], one_hot_rows.expand(batch, heads, tokens, -1)]
        key_parts = [
            k.reshape(batch, heads, tokens, head_dim),
            one_hot_z.expand(batch, heads, -1, -1),
            per_row.transpose(2, 3),
        ]
        values = v.reshape(batch, heads, tokens, head_dim)
        if padded:
            query_parts.append(self._padding_bias(term_d, term_h, term_w, grid))
            key_parts.append(torch.zeros_like(key_parts[0][..., :1]))
        queries = torch.cat([part.reshape(batch, heads, tokens, -1) for part in query_parts], dim=-1)
        keys = torch.cat(key_parts, dim=-1)
        if padded:  # one more key: the padded tokens' shared key and value, and 1 for the padding feature
            _, k_pad, v_pad = self.qkv.bias.view(3, 1, heads, 1, head_dim).expand(3, batch, heads, 1, head_dim)
            others = keys.new_zeros(batch, heads, 1, keys.shape[-1] - head_dim - 1)
            keys = torch.cat([keys, torch.cat([k_pad, others, torch.ones_like(k_pad[..., :1])], dim=-1)], dim=2)
            values = torch.cat([values, v_pad], dim=2)
        # One width for queries, keys and values (zero features add nothing), a multiple of 8: torch's fused
        # attention kernels need both, and its fallback for unequal widths is over twice as slow on CPU.
        width = (queries.shape[-1] + 7) // 8 * 8  # non-negative: traced, ONNX integer division truncates
        queries, keys = (F.pad(t, (0, width - t.shape[-1])) for t in (queries, keys))
        out = F.scaled_dot_product_attention(queries, keys, F.pad(values, (0, width - head_dim)), scale=1.0)
        out = out[..., :head_dim]
        return self.proj(out.transpose(1, 2).reshape(batch, grid, grid, grid, heads * head_dim))

    def _relative_position_terms(self, q: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Q[a,b,c]·Pd[a-z] (B,h,a,b,c,z), Q[a,b,x]·Ph[b-z] (B,h,a,b,x,z) and Q[a,b,y]·Pw[y-z] (B,h,a,b,y,z), for
        x, y, z over the whole S-wide window: Q[a, b, x] is the real query, or the q bias where x is padding."""
        batch, heads, grid = q.shape[0], q.shape[1], q.shape[2]
        size = self.grid_size
        q_row = q
        if grid < size:
            q_pad = self.qkv.bias[: heads * self.head_dim].view(1, heads, 1, 1, 1, self.head_dim)
            q_row = torch.cat([q, q_pad.expand(batch, heads, grid, grid, size - grid, self.head_dim)], dim=4)
        position = torch.arange(size, device=q.device)
        offset = position[:, None] - position[None, :] + size - 1
        term_d = q @ self.rel_pos_d[offset[:grid]].transpose(1, 2)[:, None]  # [a] (C, z) per a
        term_h = q_row @ self.rel_pos_h[offset[:grid]].transpose(1, 2)  # [b] (C, z) per b
        # Pw[y - z] depends on the query row's own position y: batch the product over y.
        rows = q_row.permute(4, 0, 1, 2, 3, 5).reshape(size, -1, self.head_dim)
        term_w = (rows @ self.rel_pos_w[offset].transpose(1, 2)).reshape(size, batch, heads, grid, grid, size)
        return term_d, term_h, term_w.permute(1, 2, 3, 4, 0, 5)

    @staticmethod
    def _padding_bias(term_d: torch.Tensor, term_h: torch.Tensor, term_w: torch.Tensor, grid: int) -> torch.Tensor:
        """log sum over padded keys (x, y or z >= G) of exp(bias), per query (B,h,a,b,c,1): three disjoint sums of
        positive terms (z padded; z real and x padded; z and x real and y padded), each factorising over x and y."""

        def sum_over(term: torch.Tensor, keys: slice) -> torch.Tensor:  # log sum_exp over x (or y): (B,h,a,b,1,z)
            return torch.logsumexp(term[:, :, :, :, keys], dim=4).unsqueeze(4)

        all_keys, real_keys, padded_keys = slice(None), slice(None, grid), slice(grid, None)
        padding = torch.cat(
            [
                (term_d + sum_over(term_h, all_keys) + sum_over(term_w, all_keys))[..., grid:],
                (term_d + sum_over(term_h, padded_keys) + sum_over(term_w, all_keys))[..., :grid],
                (term_d + sum_over(term_h, real_keys) + sum_over(term_w, padded_keys))[..., :grid],
            ],
            dim=-1,
        )
        return torch.logsumexp(padding, dim=-1, keepdim=True)


class Block3D(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, grid_size: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RelPosAttention(dim, num_heads, grid_size)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ImageEncoder3D(nn.Module):
    def __init__(
        self,
        img_size: int,
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        out_chans: int,
        window_size: int,
        global_attn_indexes: Sequence[int],
    ) -> None:
        super().__init__()
        grid = img_size // patch_size
        if window_size < grid:
            raise ValueError(f"window size {window_size} must cover the {grid}^3 token grid")
        self.patch_embed = PatchEmbed3D(patch_size, 1, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block3D(embed_dim, num_heads, mlp_ratio, grid if i in global_attn_indexes else window_size)
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv3d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm3d(out_chans),
            nn.Conv3d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm3d(out_chans),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(image) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 4, 1, 2, 3))
