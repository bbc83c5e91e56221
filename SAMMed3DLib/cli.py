"""The `sammed3d` command line: parses arguments and hands them to one module of `SAMMed3DLib.commands`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Optional, Sequence

from SAMMed3DLib import __version__
from SAMMed3DLib.commands.messages import terminal_message
from SAMMed3DLib.errors import ProcessLost, SAMMed3DError

# Subcommand name -> module in SAMMed3DLib.commands.
COMMANDS = {
    "predict": "predict",
    "evaluate": "evaluate",
    "weights": "weights",
    "export-onnx": "export_onnx",
    "export-triton": "export_triton",
    "serve": "serve",
    "finetune": "finetune",
}
READS_IMAGES = {"predict", "evaluate", "finetune"}  # the commands that read images through SimpleITK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sammed3d",
        description="SAM-Med3D: promptable 3D segmentation of CT and MRI.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"SAMMed3DLib.commands.{module_name}")
        subparser = subparsers.add_parser(
            name,
            help=module.HELP,
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.configure(subparser)
        subparser.set_defaults(run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command; a user error prints one line (no traceback) and returns 2.

    Set SAMMED3D_DEBUG=1 to see the traceback of a user error.
    """
    args = build_parser().parse_args(argv)
    if args.command in READS_IMAGES:
        _quiet_libraries()  # only there: importing SimpleITK costs the other commands ~0.15 s
    try:
        return int(args.run(args) or 0)
    except ProcessLost:
        if os.environ.get("SAMMED3D_DEBUG"):
            raise
        return 2  # under torchrun: the process that stopped the run said why, in its one line
    except (SAMMed3DError, ValueError, OSError) as error:
        if os.environ.get("SAMMED3D_DEBUG"):
            raise
        print(f"sammed3d {args.command}: error: {terminal_message(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sammed3d {args.command}: interrupted", file=sys.stderr)
        return 130


def _quiet_libraries() -> None:
    """ITK prints its warnings (an unusual NIfTI sform, a MetaImage detail) straight to stderr, between our progress
    bars and messages; what matters to the user reaches them as our own errors."""
    import SimpleITK

    SimpleITK.ProcessObject.SetGlobalWarningDisplay(False)


if __name__ == "__main__":
    sys.exit(main())
