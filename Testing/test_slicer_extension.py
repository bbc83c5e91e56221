"""Checks of the Slicer extension that run without Slicer: Python 3.9 syntax, CMake lists, catalogue entry, icons,
UI names, and the Slicer API check (every Slicer name the extension calls is in Testing/SlicerAPI.txt, with the
Slicer source file where it was found)."""

from __future__ import annotations

import ast
import json
import re
import struct
import subprocess
import sys
import threading
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "SAMMed3D"
LIBRARY = ROOT / "SAMMed3DLib"
SELF_TESTS = ROOT / "Testing" / "Python"
API_LIST = ROOT / "Testing" / "SlicerAPI.txt"

# The extension, its self-tests, and the library modules that call methods of Slicer's and VTK's objects.
SLICER_SIDE = sorted([*MODULE.rglob("*.py"), *SELF_TESTS.glob("*.py"), LIBRARY / "slicer" / "geometry.py",
                      LIBRARY / "slicer" / "segments.py"])

# Roots whose every attribute chain is Slicer's (or Qt/CTK/VTK as Slicer wraps them): listed in full.
API_ROOTS = {"slicer", "qt", "ctk", "vtk", "PyTorchUtils", "qSlicerSegmentationsEditorEffectsPythonQt"}
ALIASES = {"effects": "qSlicerSegmentationsEditorEffectsPythonQt",
           "qSlicerSegmentationsEditorEffects": "qSlicerSegmentationsEditorEffectsPythonQt"}
# Modules the Slicer-side code imports that are not Slicer: calls through them are not Slicer API.
NOT_SLICER = {"np", "os", "logging", "tempfile", "importlib", "torch", "unittest", "weights", "json", "threading",
              "time", "contextlib"}
# unittest.TestCase's own methods are not Slicer API.
UNITTEST = {name for name in dir(__import__("unittest").TestCase) if not name.startswith("_")}


def _python_methods() -> set[str]:
    """Method names of the Python and numpy types the code calls methods on (str.join, ndarray.any, ...)."""
    names: set[str] = set()
    for kind in (str, bytes, list, dict, set, tuple, np.ndarray, np.random.Generator, Path, threading.Event):
        names.update(name for name in dir(kind) if not name.startswith("_"))
    return names


def _own_names() -> set[str]:
    """Functions, methods, classes and attributes that this repository defines (Slicer-side and SAMMed3DLib)."""
    names: set[str] = set()
    for path in [*SLICER_SIDE, *LIBRARY.rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
    return names


def _chain(node: ast.AST) -> list[str] | None:
    """`a.b().c` -> ["a", "b()", "c"]; None when the chain does not start at a plain name."""
    parts: list[str] = []
    while True:
        if isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name)):
            inner = _chain(node.func)
            if inner is None:
                return None
            inner[-1] += "()"
            return inner + parts[::-1]
        elif isinstance(node, ast.Name):
            return [node.id, *parts[::-1]]
        else:
            return None


def slicer_names_used(path: Path, own: set[str], python_methods: set[str]) -> set[str]:
    """Slicer API names a file uses: full dotted names through slicer/qt/ctk/vtk/... and imports from Slicer's
    modules, `scriptedEffect.X` for the effect's C++ host, and `.X` for methods called on Slicer, VTK and Qt
    objects held in variables (any call of a method this repository does not define)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    ours, slicer_imports = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            for alias in node.names:
                if module.startswith(("SAMMed3D", "SegmentEditorSAMMed3D")) or node.level:
                    ours.add(alias.asname or alias.name)
                elif module.split(".")[0] in API_ROOTS | {"SegmentEditorEffects"}:
                    slicer_imports.add(alias.asname or alias.name)
                    names.add(f"{module}.{alias.name}")
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name in API_ROOTS)
    inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            chain = _chain(node)
            if chain and ALIASES.get(chain[0], chain[0]) in API_ROOTS:
                names.update(_api_names(chain))
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        chain = _chain(node.func) or ["?", node.func.attr]
        root, method = ALIASES.get(chain[0], chain[0]).rstrip("()"), node.func.attr
        if root in API_ROOTS:
            names.update(_api_names(chain))
        elif chain[:2] == ["self", "scriptedEffect"] and len(chain) == 3:
            names.add("scriptedEffect." + method)
        elif method.startswith("__") or method in UNITTEST or root in NOT_SLICER | ours:
            continue
        elif method not in own and method not in python_methods:
            names.add("." + method)
    return names


def _api_names(chain: list[str]) -> set[str]:
    """`slicer.util.getNode().GetName` -> {"slicer.util.getNode", ".GetName"}: the dotted name up to the first
    call, then methods of whatever that call returned."""
    chain = [ALIASES.get(chain[0], chain[0]), *chain[1:]]
    for index, part in enumerate(chain):
        if part.endswith("()"):
            return {".".join(chain[: index + 1]).replace("()", "")} | {"." + p.rstrip("()") for p in chain[index + 1 :]}
    return {".".join(chain)}


def read_api_list() -> dict[str, str]:
    entries: dict[str, str] = {}
    for number, line in enumerate(API_LIST.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        name, _, source = line.partition(" ")
        assert source.strip(), f"{API_LIST.name}:{number}: {name} has no source file"
        assert name not in entries, f"{API_LIST.name}:{number}: {name} is listed twice"
        entries[name] = source.strip()
    return entries


def test_every_slicer_api_name_called_is_listed_with_its_source():
    own, python_methods = _own_names(), _python_methods()
    used: dict[str, list[str]] = {}
    for path in SLICER_SIDE:
        for name in slicer_names_used(path, own, python_methods):
            used.setdefault(name, []).append(path.relative_to(ROOT).as_posix())
    listed = read_api_list()
    missing = {name: files for name, files in used.items() if name not in listed}
    assert not missing, f"Slicer API names used but not in {API_LIST.name} (find each in Slicer's source): {missing}"
    stale = sorted(set(listed) - set(used))
    assert not stale, f"{API_LIST.name} lists names the extension no longer uses: {stale}"


def test_the_api_check_catches_an_unlisted_call(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import slicer\n"
        "def f(self, node):\n"
        "    slicer.util.arrayFromVTKMatrix(node)\n"
        "    slicer.util.madeUpFunction()\n"
        "    node.GetMadeUpThing().Frobnicate()\n"
        "    self.scriptedEffect.saveStateForUndo()\n"
        "    ', '.join([])\n", encoding="utf-8")
    names = slicer_names_used(sample, own=set(), python_methods=_python_methods())
    assert names == {
        "slicer", "slicer.util.arrayFromVTKMatrix", "slicer.util.madeUpFunction", ".GetMadeUpThing", ".Frobnicate",
        "scriptedEffect.saveStateForUndo",
    }
    assert names - set(read_api_list()) == {"slicer.util.madeUpFunction", ".GetMadeUpThing", ".Frobnicate"}


@pytest.mark.parametrize(
    "path", [*SLICER_SIDE, *sorted(LIBRARY.rglob("*.py"))], ids=lambda p: p.relative_to(ROOT).as_posix()
)
def test_compiles_for_python_3_9(path):
    """Slicer 5.x ships Python 3.9 (older releases) to 3.12: the extension and the packaged library must parse
    with the 3.9 grammar."""
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 9))


def _cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"set({variable} ...) not found"
    return [item.replace("${MODULE_NAME}", "SAMMed3D") for item in match.group(1).split()]


def test_every_module_file_is_in_the_cmake_lists():
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts, resources = _cmake_list(text, "MODULE_PYTHON_SCRIPTS"), _cmake_list(text, "MODULE_PYTHON_RESOURCES")
    on_disk = {
        p.relative_to(MODULE).as_posix() for p in MODULE.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    }
    python = {p for p in on_disk if p.endswith(".py")}
    assert set(scripts) == python, f"scripts listed {sorted(scripts)} vs on disk {sorted(python)}"
    other = on_disk - python - {"CMakeLists.txt"}
    assert set(resources) == other, f"resources listed {sorted(resources)} vs on disk {sorted(other)}"
    # SAMMed3DLib is packaged beside the module by a recursive glob of every .py file; it must hold nothing else
    # that the code reads at run time.
    assert re.search(r"file\(GLOB_RECURSE\s+SAMMED3DLIB_PYTHON_SCRIPTS\s+RELATIVE \$\{PROJECT_SOURCE_DIR\}\s+"
                     r"\$\{PROJECT_SOURCE_DIR\}/SAMMed3DLib/\*\.py\s*\)", text)
    assert re.search(
        r"ctkMacroCompilePythonScript\(\s+TARGET_NAME SAMMed3DLib\s+SCRIPTS \"\$\{SAMMED3DLIB_PYTHON_SCRIPTS\}\"", text
    )
    data = [p for p in LIBRARY.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")]
    assert not data, f"SAMMed3DLib holds non-Python files the CMake glob does not package: {data}"
    # Every Slicer self-test is registered.
    registered = re.findall(r"slicer_add_python_unittest\(SCRIPT \$\{PROJECT_SOURCE_DIR\}/Testing/Python/(\S+)\)", text)
    assert sorted(registered) == sorted(p.name for p in SELF_TESTS.glob("*.py"))
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


def test_extension_metadata_agrees():
    top = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "find_package(Slicer REQUIRED)" in top and "add_subdirectory(SAMMed3D)" in top
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in top and "include(${Slicer_EXTENSION_CPACK})" in top
    s4ext = dict(
        line.split(" ", 1) for line in (ROOT / "SAMMed3D.s4ext").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert s4ext["depends"] == "PyTorch" and s4ext["category"] == "Segmentation"
    assert s4ext["iconurl"].endswith("SAMMed3D/Resources/Icons/SAMMed3D.png")
    entry = json.loads((ROOT / "SAMMed3D.json").read_text(encoding="utf-8"))
    # Slicer/Schemas/slicer-extension-catalog-entry-schema-v1.0.2.json: required keys, no other keys.
    allowed = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
               "dicom_support_rule", "build_subdirectory", "enabled", "tier"}
    assert {"$schema", "category", "scm_url"} <= set(entry) <= allowed
    assert entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.2.json#")
    assert entry["build_dependencies"] == ["PyTorch"] and entry["category"] == s4ext["category"]
    assert entry["scm_url"] == s4ext["scmurl"] and 1 <= entry["tier"] <= 5
    assert "Apache License" in (ROOT / "LICENSE").read_text(encoding="utf-8")[:200]


@pytest.mark.parametrize(("name", "size"), [("SAMMed3D.png", 128), ("SegmentEditorSAMMed3D.png", 21)])
def test_icons_are_real_pngs(name, size):
    data = (MODULE / "Resources" / "Icons" / name).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (size, size)


def test_the_module_uses_only_widgets_the_ui_file_has():
    ui = ElementTree.parse(MODULE / "Resources" / "UI" / "SAMMed3D.ui")
    defined = {widget.get("name") for widget in ui.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", (MODULE / "SAMMed3D.py").read_text(encoding="utf-8")))
    assert used and used <= defined, f"not in the .ui file: {sorted(used - defined)}"


def test_the_effect_imports_no_heavy_package():
    """The effect is registered at Slicer's startup, before the user agreed to install anything: what it imports
    from SAMMed3DLib must load without torch, scipy, onnxruntime or tqdm (Slicer ships numpy, VTK and SimpleITK)."""
    code = (
        "import sys\n"
        "import SAMMed3DLib.interactive.geometry, SAMMed3DLib.interactive.session, SAMMed3DLib.slicer.geometry\n"
        "import SAMMed3DLib.slicer.prompts, SAMMed3DLib.slicer.setup, SAMMed3DLib.slicer.messages\n"
        "import SAMMed3DLib.errors, SAMMed3DLib.weights\n"
        "print(sorted(m for m in ('torch', 'scipy', 'onnxruntime', 'tqdm') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", check=True)
    assert result.stdout.strip() == "[]"
