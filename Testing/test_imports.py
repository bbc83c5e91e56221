"""What each part of SAMMed3DLib needs to import: vtk only in `slicer.geometry`, and nothing heavy at import time."""

from __future__ import annotations

import subprocess
import sys


def _imported(code: str, blocked: str) -> str:
    """Run `code` in a fresh interpreter where importing `blocked` fails; what it printed."""
    script = f"import sys\nsys.modules[{blocked!r}] = None\n{code}"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, encoding="utf-8")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_only_the_slicer_geometry_module_needs_vtk():
    code = ("import SAMMed3DLib.slicer.prompts, SAMMed3DLib.slicer.setup, SAMMed3DLib.slicer.messages\n"
            "import SAMMed3DLib.interactive.session, SAMMed3DLib.cli\n"
            "try:\n    import SAMMed3DLib.slicer.geometry\nexcept ImportError:\n    print('geometry needs vtk')\n")
    assert _imported(code, "vtk") == "geometry needs vtk"


def test_the_command_line_starts_without_torch_onnxruntime_or_matplotlib():
    """`sammed3d --help` builds every subcommand's parser; none of them may need an extra to do that."""
    code = ("import contextlib, io\nfrom SAMMed3DLib.cli import build_parser\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    build_parser()\n"
            "print(sorted(m for m in ('torch', 'onnxruntime', 'matplotlib', 'skimage') if sys.modules.get(m)))")
    for blocked in ("torch", "onnxruntime"):
        assert _imported(code, blocked) == "[]"
