"""ViT image encoder: a 128^3 patch -> (B, 384, 8, 8, 8) embedding.

The reference pads the 8^3 token grid of its window blocks to one 14^3 window and attends over all 2744 tokens.
The 2232 padded tokens are zeros after `norm1`, so they all share one key and one value (the qkv bias); only their
relative-position bias differs. `RelPosAttention` sums their contribution in closed form and attends with 512 real
keys plus one "padding" key that carries it, which gives the reference's numbers at a fraction of its cost.
"""

from __future__ import annotations

from typing import Sequence

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
        heads, head_dim = self.num_heads, self.head_dim
        tokens = grid**3
        # (B, G, G, G, 3*C) -> 3 x (B, heads, G, G, G, head_dim)
        q, k, v = self.qkv(x).reshape(batch, grid, grid, grid, 3, heads, head_dim).permute(4, 0, 5, 1, 2, 3, 6)
        bias = self._relative_position_bias(q)
        q, k, v = (t.reshape(batch, heads, tokens, head_dim) for t in (q, k, v))
        if grid < self.grid_size:
            _, k_pad, v_pad = self.qkv.bias.view(3, 1, heads, 1, head_dim).expand(3, batch, heads, 1, head_dim)
            k = torch.cat([k, k_pad], dim=2)
            v = torch.cat([v, v_pad], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(batch, grid, grid, grid, heads * head_dim))

    def _relative_position_bias(self, q: torch.Tensor) -> torch.Tensor:
        """The additive bias (B, heads, G^3, G^3 [+ 1]): one column per real key, plus, in padded windows, the
        log of the summed exp-bias of all padded keys (their shared key and value are the qkv bias)."""
        batch, heads, grid = q.shape[0], q.shape[1], q.shape[2]
        size = self.grid_size
        if grid > size:
            raise ValueError(f"token grid {grid} is larger than the attention window {size}")
        # Q[a, b, x] for x in [0, S): the real query, or the q bias where x falls in the padding.
        q_row = q
        if grid < size:
            q_pad = self.qkv.bias[: heads * self.head_dim].view(1, heads, 1, 1, 1, self.head_dim)
            q_row = torch.cat([q, q_pad.expand(batch, heads, grid, grid, size - grid, self.head_dim)], dim=4)
        position = torch.arange(size, device=q.device)
        offset = position[:, None] - position[None, :] + size - 1
        table_d = self.rel_pos_d[offset[:grid]]  # [a, z] -> Pd[a - z]
        table_h = self.rel_pos_h[offset[:grid]]  # [b, z] -> Ph[b - z]
        table_w = self.rel_pos_w[offset]  # [y, z] -> Pw[y - z]
        term_d = torch.einsum("nhijkc,izc->nhijkz", q, table_d)  # Q[a,b,c]·Pd[a-z]
        term_h = torch.einsum("nhijxc,jzc->nhijxz", q_row, table_h)  # Q[a,b,x]·Ph[b-z]
        term_w = torch.einsum("nhijyc,yzc->nhijyz", q_row, table_w)  # Q[a,b,y]·Pw[y-z]

        tokens = grid**3
        padded = grid < size
        bias = q.new_empty(batch, heads, tokens, tokens + padded)
        # Real keys: the two (a, b)-only terms are summed first on the small (a, b, x, y, z) grid, then one broadcast
        # pass over (a, b, c, x, y, z) adds the (a, b, c, z) term (copied in, not `out=`: training needs autograd).
        rows_h = term_h[:, :, :, :, :grid, :grid]
        rows_w = term_w[:, :, :, :, :grid, :grid]
        per_row = rows_h[:, :, :, :, :, None, :] + rows_w[:, :, :, :, None, :, :]  # (B, h, a, b, x, y, z)
        real = bias[..., :tokens].unflatten(-1, (grid, grid, grid)).unflatten(2, (grid, grid, grid))
        real.copy_(term_d[:, :, :, :, :, None, None, :grid] + per_row[:, :, :, :, None])
        if not padded:
            return bias

        # Padded keys are those with x, y or z >= G: split them into three disjoint sums of positive terms
        # (z padded; z real and x padded; z and x real and y padded), each of which factorises over x and y.
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
        bias[..., tokens] = torch.logsumexp(padding, dim=-1).reshape(batch, heads, tokens)
        return bias


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
        self.img_size = img_size
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
