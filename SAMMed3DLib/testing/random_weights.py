"""Random weights for tests: every parameter and buffer drawn at random, since zero or identity
initialisations (relative-position tables, biases, LayerNorm) hide exactly the behaviours that must match."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from SAMMed3DLib.model import SamMed3D, build_sam_med3d


@torch.no_grad()
def randomise_(model: nn.Module, seed: int) -> nn.Module:
    """Fill every parameter and persistent buffer in place: LayerNorm scales near 1, relative-position tables
    large enough to matter, the positional gaussian matrix standard normal, everything else small."""
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in model.state_dict().items():
        noise = torch.randn(tensor.shape, generator=generator)
        if name.endswith("gaussian_matrix"):
            tensor.copy_(noise)
        elif "rel_pos" in name:
            tensor.copy_(0.2 * noise)
        elif tensor.dim() == 1 and name.endswith("weight"):  # LayerNorm scales
            tensor.copy_(1 + 0.1 * noise)
        else:
            tensor.copy_((0.05 if tensor.dim() > 1 else 0.1) * noise)
    return model


def random_model(variant: str = "tiny", seed: int = 0, **overrides: object) -> SamMed3D:
    return randomise_(build_sam_med3d(variant, **overrides), seed).eval()


def save_random_checkpoint(path: Path, variant: str = "tiny", seed: int = 0) -> Path:
    """A checkpoint file in the published format (weights under `model_state_dict`)."""
    torch.save({"model_state_dict": random_model(variant, seed).state_dict()}, path)
    return path
