"""Reading SAM-Med3D checkpoints safely and exactly (strict keys and shapes; no arbitrary unpickling)."""

from __future__ import annotations

import argparse
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Dict, Mapping, Optional, Union

import torch

from SAMMed3DLib.errors import SAMMed3DError
from SAMMed3DLib.model.sam_med3d import VARIANTS, SamMed3D, build_sam_med3d

# Besides tensors and plain containers, the reference's training script pickles its argparse.Namespace as `args`.
ALLOWED_GLOBALS = [argparse.Namespace]
_POINT_EMBEDDING_KEY = re.compile(r"prompt_encoder\.point_embeddings\.(\d+)\.weight")
_LISTED = 5
_LEGACY_MAGIC = b"\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"  # torch's old (non-zip) format: a pickled magic number first


def safe_load(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu", mmap: bool = False) -> object:
    """`torch.load(weights_only=True)` allowing `ALLOWED_GLOBALS`; `mmap` (read tensors only when used) where the file
    is torch's zip format. torch's note that an old-format file uses another pickle protocol is for torch's
    developers, so it is not passed on."""
    with torch.serialization.safe_globals(ALLOWED_GLOBALS), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap and zipfile.is_zipfile(path))


def read_state_dict(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """The weights in a checkpoint file: a state dict, a training checkpoint (`model_state_dict`), DDP keys
    (`module.` prefix) or `.safetensors`."""
    path = Path(path)
    if not path.is_file():
        raise SAMMed3DError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            content: object = load_file(str(path))
        except SafetensorError as error:
            raise SAMMed3DError(f"{path} is not a readable .safetensors checkpoint: {error}") from None
    else:
        try:
            content = safe_load(path)
        except pickle.UnpicklingError as error:
            if "Unsupported operand" in str(error) and _LEGACY_MAGIC in _head(path):
                raise SAMMed3DError(
                    f"{path} is in torch's old (non-zip) format with a newer pickle protocol, which the safe "
                    "(weights-only) loader cannot read; save it again with torch.save's default format"
                ) from None
            if "Weights only load failed" in str(error):
                raise SAMMed3DError(
                    f"{path} holds Python objects other than weights; refusing to unpickle them (not a checkpoint "
                    "written by SAM-Med3D or SAMMed3D)"
                ) from None
            raise SAMMed3DError(f"{path} is not a PyTorch checkpoint ({error})") from None
        except Exception as error:  # any other parse failure of a file that is not a torch checkpoint
            reason = (str(error).splitlines() or [type(error).__name__])[0]
            raise SAMMed3DError(f"{path} is not a PyTorch checkpoint ({reason})") from None
    if isinstance(content, Mapping) and "model_state_dict" in content:
        content = content["model_state_dict"]
    if (
        not isinstance(content, Mapping)
        or not content
        or not all(isinstance(value, torch.Tensor) for value in content.values())
    ):
        raise SAMMed3DError(f"{path} is not a SAM-Med3D checkpoint: it holds no state dict of tensors")
    return {key.removeprefix("module."): value for key, value in content.items()}


def load_sam_med3d(
    path: Union[str, Path], device: Union[str, torch.device] = "cpu", variant: Optional[str] = None
) -> SamMed3D:
    """A SamMed3D with the weights of `path`, in eval mode on `device`.

    The variant is recognised from the encoder's width unless given, and the number of point embeddings (2, or 4
    in box-capable checkpoints) is read from the file. Keys and shapes must match exactly.
    """
    state = read_state_dict(path)
    if variant is None:
        width_key = "image_encoder.patch_embed.proj.weight"
        width = state[width_key].shape[0] if width_key in state else None
        matching = [name for name, config in VARIANTS.items() if config.encoder_dim == width]
        if not matching:
            raise SAMMed3DError(f"{path} is not a SAM-Med3D checkpoint: no known variant has an encoder width {width}")
        variant = matching[0]
    point_embeddings = sum(1 for key in state if _POINT_EMBEDDING_KEY.fullmatch(key))
    model = build_sam_med3d(variant, num_point_embeddings=point_embeddings or VARIANTS[variant].num_point_embeddings)
    _check_matches(model.state_dict(), state, path)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def _check_matches(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], path: Path) -> None:
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    problems = [
        f"{len(keys)} {kind} keys ({_listing(keys)})"
        for kind, keys in (("missing", missing), ("unexpected", unexpected))
        if keys
    ]
    if problems:
        raise SAMMed3DError(f"{path} does not fit SAM-Med3D: {'; '.join(problems)}")
    for key, tensor in expected.items():
        if found[key].shape != tensor.shape:
            raise SAMMed3DError(
                f"{path} does not fit SAM-Med3D: {key} has shape {tuple(found[key].shape)}, "
                f"expected {tuple(tensor.shape)}"
            )


def _head(path: Path) -> bytes:
    with open(path, "rb") as stream:
        return stream.read(32)


def _listing(keys: list) -> str:
    return ", ".join(keys[:_LISTED]) + (", ..." if len(keys) > _LISTED else "")
