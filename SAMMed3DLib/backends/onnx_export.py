"""Export SAM-Med3D to ONNX: `encoder.onnx` (patch -> embedding) and `decoder.onnx` (prompt encoder and mask decoder
together: any number of points, a 32^3 mask prompt), for `SAMMed3DLib.backends.onnx_predictor.OnnxPredictor`.

The export traces the torch network with the TorchScript-based exporter (`torch.onnx.export(dynamo=False)`): the
torch.export-based one fails on this encoder in torch 2.13 (a view error in its decomposition of
`scaled_dot_product_attention`). The encoder's closed-form window attention (512 real keys, plus one padding key
in window blocks; never the reference's 2744-token window) is traced as it is.
Every export is checked numerically against torch before it replaces anything in the output folder; both files
carry the source checkpoint's sha256 and the package version as metadata.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from SAMMed3DLib import __version__
from SAMMed3DLib.backends.onnx_predictor import (
    CHECKPOINT_NAME_KEY,
    CHECKPOINT_SHA256_KEY,
    DECODER_FILE,
    DECODER_INPUTS,
    DECODER_OUTPUTS,
    ENCODER_FILE,
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    VERSION_KEY,
    OnnxPredictor,
)
from SAMMed3DLib.errors import MissingPackages, SAMMed3DError
from SAMMed3DLib.files import temporary_folder
from SAMMed3DLib.model import SamMed3D, load_sam_med3d

OPSET = 18
# Largest |ONNX Runtime - torch| accepted by the check, relative to max(1, largest |torch value|).
TOLERANCE = 1e-4
_CHECK_POINT_COUNTS = (1, 3, 10)
_CHECK_BATCH = 2  # patches encoded at once by the check: the batch dimension is symbolic


class _Encoder(nn.Module):
    def __init__(self, model: SamMed3D) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.encode(image)


class _Decoder(nn.Module):
    def __init__(self, model: SamMed3D) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, embedding: torch.Tensor, points: torch.Tensor, labels: torch.Tensor, mask_logits: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.model.decode(embedding, points, labels, mask_logits, multimask=False)


# The parts of an export, in order, as `on_stage` reports them.
STAGES = ("load", "encoder", "decoder", "check")


def export_checkpoint(
    checkpoint: Union[str, Path], output: Union[str, Path], on_stage: Optional[Callable[[str], None]] = None
) -> Dict[str, float]:
    """Export a checkpoint file into the folder `output` (created if needed); returns the check's largest
    differences (see `check_export`). `on_stage(name)` as each of `STAGES` starts."""
    from SAMMed3DLib.weights import sha256_of

    checkpoint = Path(checkpoint)
    _require_onnx_packages()  # before the slow part
    prepare_output_folder(output)
    if on_stage is not None:
        on_stage("load")
    model = load_sam_med3d(checkpoint)
    metadata = {CHECKPOINT_SHA256_KEY: sha256_of(checkpoint), CHECKPOINT_NAME_KEY: checkpoint.name}
    return export_model(model, output, metadata, on_stage)


def export_model(
    model: SamMed3D,
    output: Union[str, Path],
    metadata: Optional[Dict[str, str]] = None,
    on_stage: Optional[Callable[[str], None]] = None,
) -> Dict[str, float]:
    """Write `encoder.onnx` and `decoder.onnx` of `model` (moved to CPU float32) into `output`.

    The files are written and checked in a temporary folder inside `output` and only then renamed into place, so a
    failed export leaves an earlier one untouched. `metadata` adds to the package version in both files;
    `on_stage(name)` as each of the last three `STAGES` starts.
    """
    _require_onnx_packages()
    output = prepare_output_folder(output)
    model = model.to("cpu", torch.float32).eval()
    properties = {VERSION_KEY: __version__, **(metadata or {})}
    stage = on_stage or (lambda name: None)
    with temporary_folder(output / ENCODER_FILE) as staging:
        stage("encoder")
        _export_encoder(model, staging / ENCODER_FILE)
        stage("decoder")
        _export_decoder(model, staging / DECODER_FILE)
        for name in (ENCODER_FILE, DECODER_FILE):
            _add_metadata(staging / name, properties)
        stage("check")
        differences = check_export(model, staging)
        for name in (ENCODER_FILE, DECODER_FILE):
            (staging / name).replace(output / name)
    return differences


def _require_onnx_packages() -> None:
    """The exporter needs `onnx`, the check after it ONNX Runtime: say so in one line rather than halfway through."""
    MissingPackages.require("exporting to ONNX", "onnx", "onnx", "onnxruntime")


def prepare_output_folder(output: Union[str, Path]) -> Path:
    output = Path(output).expanduser()
    if output.exists() and not output.is_dir():
        raise SAMMed3DError(f"{output} is a file, not a folder for the exported model")
    output.mkdir(parents=True, exist_ok=True)
    return output


def _export(
    module: nn.Module,
    inputs: Tuple[torch.Tensor, ...],
    path: Path,
    input_names,
    output_names,
    dynamic_axes: Optional[Dict[str, Dict[int, str]]] = None,
) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about Python-level shape checks (constant for a fixed patch size) and that this
        # exporter is the older of the two (see the module docstring for why it is the one used).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            inputs,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )


def _export_encoder(model: SamMed3D, path: Path) -> None:
    """The encoder with a symbolic batch dimension: the session sends one patch, an inference server's dynamic
    batching (Triton) several."""
    size = model.config.image_size
    image = torch.zeros(1, 1, size, size, size)
    batch = {name: {0: "batch"} for name in (*ENCODER_INPUTS, *ENCODER_OUTPUTS)}
    _export(_Encoder(model), (image,), path, ENCODER_INPUTS, ENCODER_OUTPUTS, dynamic_axes=batch)


def _export_decoder(model: SamMed3D, path: Path) -> None:
    config = model.config
    grid, logits_size = config.image_size // config.patch_size, config.logits_size
    embedding = torch.zeros(1, config.prompt_dim, grid, grid, grid)
    points = torch.full((1, 3, 3), config.image_size / 2)
    labels = torch.tensor([[1, 0, 1]])
    mask_logits = torch.zeros(1, 1, logits_size, logits_size, logits_size)
    _export(
        _Decoder(model),
        (embedding, points, labels, mask_logits),
        path,
        DECODER_INPUTS,
        DECODER_OUTPUTS,
        dynamic_axes={"points": {1: "points"}, "labels": {1: "points"}},
    )


def _add_metadata(path: Path, properties: Dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, properties)
    onnx.save(model, str(path))


@torch.inference_mode()
def check_export(model: SamMed3D, directory: Path, seed: int = 0) -> Dict[str, float]:
    """Run the exported files on ONNX Runtime (CPU) and torch with the same random patches (a batch of two) and
    prompts (1, 3 and 10 points, a random mask prompt); returns the largest absolute differences of "embedding",
    "logits" and "iou" and raises SAMMed3DError if one exceeds `TOLERANCE` relative to max(1, the largest torch
    value)."""
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    size, logits_size = config.image_size, config.logits_size
    predictor = OnnxPredictor(directory, providers="cpu")
    images = torch.randn(_CHECK_BATCH, 1, size, size, size, generator=generator)
    embeddings = model.encode(images)
    differences = {"embedding": _difference(predictor.encode(images.numpy()), embeddings), "logits": 0.0, "iou": 0.0}
    expected = embeddings[:1]
    for count in _CHECK_POINT_COUNTS:
        points = torch.rand(1, count, 3, generator=generator) * size - 0.5
        labels = torch.randint(0, 2, (1, count), generator=generator)
        mask_logits = torch.randn(1, 1, logits_size, logits_size, logits_size, generator=generator)
        logits, iou = model.decode(expected, points, labels, mask_logits)
        found = predictor.decode(expected.numpy(), points.numpy(), labels.numpy(), mask_logits.numpy())
        differences["logits"] = max(differences["logits"], _difference(found[0], logits))
        differences["iou"] = max(differences["iou"], _difference(found[1], iou))
    return differences


def _difference(found: np.ndarray, expected: torch.Tensor) -> float:
    expected = expected.numpy()
    if found.shape != expected.shape:
        raise SAMMed3DError(f"the ONNX export gives shape {found.shape}, torch {expected.shape}")
    difference = float(np.abs(found - expected).max())
    if not difference <= TOLERANCE * max(1.0, float(np.abs(expected).max())):
        raise SAMMed3DError(
            f"the ONNX export differs from torch by {difference:.3g} (tolerance {TOLERANCE:g} relative); not written"
        )
    return difference
