"""Errors are facts; each front end words the fix: the terminal with flags and commands, Slicer with its buttons."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from SAMMed3DLib import errors
from SAMMed3DLib.commands.messages import terminal_message
from SAMMed3DLib.slicer.messages import user_message

LIBRARY = Path(__file__).resolve().parent.parent / "SAMMed3DLib"
FRONT_END = ("commands", "cli.py")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]+")
COMMAND = re.compile(r"\bsammed3d (predict|evaluate|weights|export-onnx|export-triton|serve|finetune)\b")


def _messages(tree: ast.AST):
    """String constants of a module that are not docstrings or comments (f-string parts included)."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_no_library_message_names_a_flag_or_a_command():
    offenders = []
    for path in sorted(LIBRARY.rglob("*.py")):
        relative = path.relative_to(LIBRARY).as_posix()
        if relative.startswith(FRONT_END):
            continue
        for line, text in _messages(ast.parse(path.read_text(encoding="utf-8"))):
            if FLAG.search(text) or COMMAND.search(text):
                offenders.append(f"{relative}:{line}: {text!r}")
    assert not offenders, "\n".join(offenders)


def test_the_scan_finds_a_flag_in_a_message():
    """The check above would see a flag in an f-string part, and leaves docstrings alone."""
    tree = ast.parse('def f(x):\n    """Takes --output."""\n    raise ValueError(f"--output {x}: no such folder")\n')
    found = [text for _, text in _messages(tree) if FLAG.search(text)]
    assert found == ["--output "]


CASES = [
    (errors.NotDownloadable("base", "https://drive.google.com/x"),
     "weights import FILE --name base", "choose 'Local file' in the SAM-Med3D module"),
    (errors.CheckpointOffline("https://h/x.pth", "Name or service not known"),
     "`sammed3d weights import FILE` here", "choose 'Local file'"),
    (errors.DownloadInterrupted("https://h/x.pth", "timed out", Path("x.pth.part")),
     "run the same command again to resume", "Click 'Download'"),
    (errors.ChecksumUnknown("https://h/x.pth", "ab" * 32, Path("x.pth.part")),
     f"run again with --sha256 {'ab' * 32}", "published hash"),
    (errors.CacheConflict(Path("/c/x.pth"), "a" * 64, "b" * 64), "another --name", "Download it again"),
    (errors.CheckpointNotFound("turbbo", ["turbo", "base"]), "--checkpoint turbbo: no such file", "Choose a model"),
    (errors.MissingPackages("the ONNX Runtime backend", ["onnxruntime"], "onnx"),
     "pip install 'SAMMed3DLib[onnx]'", "Click 'Install dependencies'"),
    (errors.DeviceUnavailable("cuda", "CPU-only torch"), "--device cpu", "device 'auto' or 'cpu'"),
    (errors.NotAnExport(Path("/m"), "no such folder"), "sammed3d export-onnx", "encoder.onnx and decoder.onnx"),
    (errors.OtherRun(Path("/r"), {"seed": (0, 1)}), "use another --output folder", "/r holds results"),
    (errors.NameTaken("liver", Path("/c/liver.pth"), "a" * 64, "b" * 64), "add --replace", "Download it again"),
    (errors.NotCached("liver", Path("/c"), ["turbo"]), "`sammed3d weights list`", "holds no checkpoint 'liver'"),
    (errors.CacheNotWritable(Path("/ro/weights"), "Read-only file system", Path("/ro")),
     "set SAMMED3D_HOME to a writable folder", "SAMMED3D_HOME set to a writable folder"),
    (errors.OutputIsInput(Path("ct.nrrd"), Path("ct.nrrd"), "image"), "choose another --output", "input image"),
    (errors.CaseFailed("liver_3", errors.DeviceUnavailable("cuda", "no GPU")), "; use --device cpu", "case liver_3"),
    (errors.ServerUnreachable("http://gpu1:8000", "connection refused"), "check --server", "'Test connection'"),
    (errors.NotAV2Server("http://gpu1:80", "GET /v2 answered HTTP 404"), "like http://HOST:8000",
     "encoder server"),
    (errors.ServerNotReady("http://gpu1:8000", "sammed3d_encoder"), "try again when it has loaded",
     "Wait until the server has loaded"),
    (errors.ModelMissing("http://gpu1:8000", "sammed3d_encoder"), "`sammed3d serve`", "administrator to serve"),
    (errors.AccessDenied("http://gpu1:8000", 401, False), "--token-file FILE", "Enter the server's token"),
    (errors.AccessDenied("https://gpu1:8000", 403, True, "forbidden"), "for access", "for access"),
    (errors.TLSVerificationFailed("https://gpu1:8000", "self-signed certificate"), "SSL_CERT_FILE",
     "trusted certificates"),
    (errors.InsecureToken("http://gpu1:8000"), "https:// address in --server", "https:// address in"),
    (errors.CheckpointMismatch("http://gpu1:8000", "a" * 64, "b" * 64, "/m/decoder.onnx"),
     "sammed3d export-onnx", "decoder exported from the checkpoint the server uses"),
]


@pytest.mark.parametrize(("error", "terminal", "slicer"), CASES,
                         ids=[f"{type(c[0]).__name__}-{n}" for n, c in enumerate(CASES)])
def test_each_front_end_words_the_fix_for_its_users(error, terminal, slicer):
    facts = str(error)
    assert not FLAG.search(facts) and not COMMAND.search(facts), facts
    words_for_terminal = terminal_message(error)
    assert terminal in words_for_terminal and facts.rstrip(".") in words_for_terminal and "\n" not in words_for_terminal
    words_for_slicer = user_message(error)
    assert slicer in words_for_slicer and facts.rstrip(".") in words_for_slicer
    assert not FLAG.search(words_for_slicer) and not re.search(r"\bsammed3d\b", words_for_slicer)  # a model name


def test_errors_carry_their_facts():
    mismatch = errors.ChecksumMismatch(Path("/c/x.pth"), "a" * 64, "b" * 64, source="https://h/x.pth")
    assert (mismatch.path, mismatch.expected, mismatch.actual, mismatch.source) == (
        Path("/c/x.pth"), "a" * 64, "b" * 64, "https://h/x.pth")
    assert str(mismatch) == f"SHA256 mismatch for /c/x.pth downloaded from https://h/x.pth: expected {'a' * 64}, " \
                            f"got {'b' * 64}"
    offline = errors.CheckpointOffline("https://h/x.pth", "refused")
    assert isinstance(offline, errors.DownloadFailed) and offline.url == "https://h/x.pth"
    with pytest.raises(errors.MissingPackages, match="needs surely_not_a_package, which is not installed") as raised:
        errors.MissingPackages.require("a test", "eval", "surely_not_a_package", "numpy")
    assert raised.value.packages == ("surely_not_a_package",) and raised.value.extra == "eval"


def test_a_failed_case_of_a_run_on_several_processes_is_one_line_with_its_rank_and_case():
    missing = errors.MissingPackages("evaluation", ["scikit-image"], "eval")
    failed = errors.CaseFailed("liver_007", missing, rank=1)
    assert str(failed) == "rank 1, case liver_007: evaluation needs scikit-image, which is not installed"
    assert terminal_message(failed) == ("rank 1, case liver_007: evaluation needs scikit-image, which is not "
                                        "installed: pip install 'SAMMed3DLib[eval]'")
    crashed = errors.CaseFailed("b", RuntimeError("CUDA out of memory. Tried to allocate 2 GiB\nmore detail"), rank=0)
    assert terminal_message(crashed) == "rank 0, case b: RuntimeError: CUDA out of memory. Tried to allocate 2 GiB"
