"""What the commands share: the model options, building the predictor from them, and download progress."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

from SAMMed3DLib.backends.predictor import BACKENDS, DEVICES, Predictor, is_onnx_export, load_predictor
from SAMMed3DLib.errors import SAMMed3DError
from SAMMed3DLib.interactive.preprocess import MODALITY_CHOICES
from SAMMed3DLib.weights import Progress


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    add_checkpoint_argument(group, "; with --backend onnx, the folder of an ONNX export; with --backend remote, the "
                                   "decoder: an ONNX export's folder (its decoder.onnx is enough) or the checkpoint")
    group.add_argument("--device", choices=DEVICES, default="auto",
                       help="where torch or ONNX Runtime runs (default: auto)")
    group.add_argument("--backend", choices=BACKENDS, default="torch",
                       help="torch (default), onnx (ONNX Runtime), or remote (encode on --server, decode here)")
    group.add_argument(
        "--modality", choices=MODALITY_CHOICES, default="auto",
        help="CT intensities are clamped to [-1000, 1000] before normalising (default: decided from the data)",
    )
    group.add_argument("--server", metavar="URL",
                       help="with --backend remote: the inference server (http(s)://HOST:PORT), e.g. `sammed3d serve` "
                            "or Triton; only the normalised 192 mm patch is sent to it")
    add_token_argument(group, "the bearer token for --server")


def add_checkpoint_argument(parser: Any, more: str = "") -> None:
    """--checkpoint PATH_OR_NAME, resolved with `weights.resolve`; `more` adds to its help."""
    parser.add_argument("--checkpoint", required=True, metavar="PATH_OR_NAME",
                        help="a checkpoint file, or a name from `sammed3d weights list` (e.g. turbo: downloaded on "
                             f"first use){more}")


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: need a whole number >= 1")
    return int(text)


def add_token_argument(parser: Any, what: str) -> None:
    parser.add_argument("--token-file", type=Path, metavar="FILE", help=f"a file holding {what} (one line)")


def read_token(path: Optional[Path]) -> Optional[str]:
    """The token in --token-file (None without one); a SAMMed3DError if the file is missing or holds no token."""
    if path is None:
        return None
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise SAMMed3DError(f"--token-file {path}: {error.strerror or error}") from None
    if not token or not token.isprintable() or any(c.isspace() for c in token):
        raise SAMMed3DError(f"--token-file {path}: the file must hold one token (one line without spaces)")
    return token


def check_output_folder(path: Path) -> None:
    """`--output` as a folder to write into: not a file, and writable; before a checkpoint is downloaded or loaded."""
    from SAMMed3DLib.files import check_writable

    if path.exists() and not path.is_dir():
        raise SAMMed3DError(f"--output {path} is a file; give a folder")
    check_writable(path, folder=True)


def resolve_model(args: argparse.Namespace, progress: bool = True) -> Path:
    """The checkpoint file `--checkpoint` names (downloaded first, with a progress bar if `progress`, if it is a
    published name not cached yet), or with `--backend onnx` the export folder as given."""
    from SAMMed3DLib import weights

    if args.backend == "onnx" or (args.backend == "remote" and is_onnx_export(args.checkpoint)):
        return Path(args.checkpoint)
    return Path(weights.resolve(args.checkpoint, download_progress() if progress else None))


def build_predictor(args: argparse.Namespace, model: Optional[Path] = None) -> Predictor:
    """The predictor the options ask for (on `model`, default `resolve_model`); a user error (missing file, not a
    checkpoint, a server option without the remote backend) raises SAMMed3DError."""
    if (args.backend == "remote") != bool(args.server):
        raise SAMMed3DError("--backend remote needs --server URL" if args.server is None
                            else "--server is for --backend remote")
    if args.token_file is not None and not args.server:
        raise SAMMed3DError("--token-file is for --server")
    token = read_token(args.token_file)
    return load_predictor(args.backend, model or resolve_model(args), args.device, server=args.server, token=token)


def download_progress(description: str = "download") -> Progress:
    """A download's `on_progress` callback drawing a tqdm bar on stderr (closed when the last byte arrives)."""
    from tqdm import tqdm

    bar = None

    def update(received: int, total: Optional[int]) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, initial=received, unit="B", unit_scale=True, unit_divisor=1024,
                       desc=description, file=sys.stderr, leave=False)
        bar.update(received - bar.n)
        if total is not None and received >= total:
            bar.close()

    return update
