"""The SAM-Med3D network: `build_sam_med3d` for a fresh one, `load_sam_med3d` for a checkpoint."""

from SAMMed3DLib.model.checkpoint import load_sam_med3d, read_state_dict
from SAMMed3DLib.model.sam_med3d import VARIANTS, SamMed3D, SamMed3DConfig, build_sam_med3d

__all__ = ["VARIANTS", "SamMed3D", "SamMed3DConfig", "build_sam_med3d", "load_sam_med3d", "read_state_dict"]
