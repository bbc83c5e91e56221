"""Problems a user can fix, as facts: what is wrong and the values involved, never what to type or click.

Every library error is a `SAMMed3DError`; `str(error)` says what happened in terms of the user's own files, URLs and
values. The subclasses carry those values as attributes so that each front end can word the fix for its users:
`SAMMed3DLib.commands` for a terminal (a flag, a command), the Slicer module for Slicer (a button, a dialog). No
library message names a command-line flag or a command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence


class SAMMed3DError(Exception):
    """A problem with the user's input (a file, a point, a checkpoint, a setting) that the message states."""


class UnknownChoice(SAMMed3DError, ValueError):
    """`value` is not one of `choices` for the setting `what` (a backend, a device, a protocol...)."""

    def __init__(self, what: str, value: object, choices: Sequence[str]) -> None:
        self.what, self.value, self.choices = what, value, tuple(choices)
        super().__init__(f"unknown {what} {value!r}; the choices are {', '.join(self.choices)}")


class DeviceUnavailable(SAMMed3DError):
    """The device asked for (`device`: "cuda", "mps") cannot run here, for `reason`."""

    def __init__(self, device: str, reason: str) -> None:
        self.device, self.reason = device, reason
        super().__init__(f"device {device!r} is not available ({reason})")


class MissingPackages(SAMMed3DError):
    """`purpose` needs Python packages (`packages`, pip names) that are not installed; `extra` is the SAMMed3DLib
    extra that installs them."""

    def __init__(self, purpose: str, packages: Sequence[str], extra: str) -> None:
        self.purpose, self.packages, self.extra = purpose, tuple(packages), extra
        verb = "is" if len(self.packages) == 1 else "are"
        super().__init__(f"{purpose} needs {' and '.join(self.packages)}, which {verb} not installed")

    @classmethod
    def require(cls, purpose: str, extra: str, *modules: str) -> None:
        """Raise for the `modules` (import names) that cannot be imported, before any work that needs them."""
        import importlib.util

        missing = [_PIP_NAMES.get(name, name) for name in modules if importlib.util.find_spec(name) is None]
        if missing:
            raise cls(purpose, missing, extra)


_PIP_NAMES = {"skimage": "scikit-image"}  # import name -> pip name, where they differ


class InvalidChecksum(SAMMed3DError, ValueError):
    """`value` is not a SHA256 hash (64 hexadecimal digits)."""

    def __init__(self, value: str) -> None:
        self.value = value
        super().__init__(f"{value!r} is not a SHA256 hash (64 hexadecimal digits)")


class ChecksumMismatch(SAMMed3DError):
    """The file at `path` (from `source`, a URL or a file, when known) has SHA256 `actual`, not `expected`."""

    def __init__(self, path: Path, expected: str, actual: str, source: Optional[str] = None,
                 detail: str = "") -> None:
        self.path, self.expected, self.actual, self.source = Path(path), expected, actual, source
        origin = f" downloaded from {source}" if source and source != str(path) else ""
        super().__init__(f"SHA256 mismatch for {path}{origin}: expected {expected}, got {actual}{detail}")


class ChecksumUnknown(SAMMed3DError):
    """A file was downloaded from `url` that has no published SHA256: its hash is `actual`; it is kept at `kept` so
    that trusting it needs no second transfer."""

    def __init__(self, url: str, actual: str, kept: Path) -> None:
        self.url, self.actual, self.kept = url, actual, Path(kept)
        super().__init__(f"no published SHA256 for {url}; the downloaded file's SHA256 is {actual}")


class DownloadFailed(SAMMed3DError):
    """`url` could not be downloaded (`reason`: an HTTP status, a refused connection...)."""

    def __init__(self, url: str, reason: object) -> None:
        self.url, self.reason = url, reason
        super().__init__(f"cannot download {url} ({reason})")


class CheckpointOffline(DownloadFailed):
    """The host of `url` cannot be reached at all (no network, DNS, proxy): the machine may be offline."""


class DownloadInterrupted(DownloadFailed):
    """The transfer from `url` broke off; what arrived is kept at `part`, so the next attempt resumes there."""

    def __init__(self, url: str, reason: object, part: Path) -> None:
        self.part = Path(part)
        super().__init__(url, f"interrupted: {reason}")


class NotDownloadable(SAMMed3DError):
    """The published checkpoint `name` has no direct download: it is offered only on the web page `page`."""

    def __init__(self, name: str, page: str) -> None:
        self.name, self.page = name, page
        super().__init__(f"checkpoint {name!r} has no direct download; it is offered at {page}")


class CacheConflict(SAMMed3DError):
    """The weights cache already holds `path` under the same name, with SHA256 `cached`, not `expected`."""

    def __init__(self, path: Path, cached: str, expected: str) -> None:
        self.path, self.cached, self.expected = Path(path), cached, expected
        super().__init__(f"the weights cache already holds a different {self.path.name} (SHA256 {cached}, not "
                         f"{expected}) at {path}")


class CheckpointNotFound(SAMMed3DError):
    """`value` is neither a checkpoint file nor a checkpoint name; `known` are the names there are."""

    def __init__(self, value: str, known: Sequence[str], reason: str = "no such file") -> None:
        self.value, self.known = value, tuple(known)
        super().__init__(f"{value}: {reason}, and not a checkpoint name ({', '.join(self.known)})")


class NotAnExport(SAMMed3DError):
    """`path` is not a folder written by the ONNX export (it does not exist, or lacks or has other model files)."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path} is not an ONNX export of SAM-Med3D: {reason}")


class OtherRun(SAMMed3DError):
    """The results folder `folder` holds results of a run whose settings `changed` differ from this run's."""

    def __init__(self, folder: Path, changed: Sequence[str]) -> None:
        self.folder, self.changed = Path(folder), tuple(changed)
        super().__init__(f"{folder} holds results of a run with other settings ({', '.join(self.changed)} differ)")


class CaseFailed(SAMMed3DError):
    """Process `rank` of a run on several processes could not evaluate the case `case`, for `cause`."""

    def __init__(self, rank: int, case: str, cause: BaseException) -> None:
        self.rank, self.case, self.cause = rank, case, cause
        super().__init__(f"rank {rank}, case {case}: {describe(cause)}")


def describe(error: BaseException) -> str:
    """An error in one line: its message's first line; the type's name first unless it is one of ours."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    if isinstance(error, SAMMed3DError):
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class ProcessLost(SAMMed3DError):
    """Another process of a run on several processes stopped while this one waited for it (`reason`: what the
    process group said); that process reports why."""

    def __init__(self, reason: object) -> None:
        self.reason = reason
        detail = describe(reason) if isinstance(reason, BaseException) else reason
        super().__init__(f"another process of this run stopped ({detail})")
