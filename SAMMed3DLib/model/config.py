"""The network's sizes: the published configuration and a small one for tests and quick trials (no torch needed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple


@dataclass(frozen=True)
class SamMed3DConfig:
    image_size: int = 128
    patch_size: int = 16
    encoder_dim: int = 768
    encoder_depth: int = 12
    encoder_heads: int = 12
    encoder_mlp_ratio: float = 4.0
    encoder_window_size: int = 14
    encoder_global_attn_indexes: Tuple[int, ...] = (2, 5, 8, 11)
    prompt_dim: int = 384
    mask_in_chans: int = 16
    num_point_embeddings: int = 2
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    iou_head_hidden_dim: int = 256

    @property
    def logits_size(self) -> int:
        """Edge of the decoder's output grid: the embedding grid upscaled 4x (two stride-2 transposed convolutions)."""
        return self.image_size // self.patch_size * 4


VARIANTS: Dict[str, SamMed3DConfig] = {
    # Every published checkpoint (sam_med3d.pth, sam_med3d_turbo.pth, ...).
    "vit_b_ori": SamMed3DConfig(),
    # The same network, small: for tests and quick trials of the training code.
    "tiny": SamMed3DConfig(
        encoder_dim=96,
        encoder_depth=4,
        encoder_heads=2,
        encoder_global_attn_indexes=(1, 3),
        prompt_dim=48,
        decoder_mlp_dim=128,
        iou_head_hidden_dim=32,
    ),
}
