"""Problems a user can fix, as facts: what is wrong and the values involved, never what to type or click.

Every library error is a `SAMMed3DError`; `str(error)` says what happened in terms of the user's own files, URLs and
values. The subclasses carry those values as attributes so that each front end can word the fix for its users:
`SAMMed3DLib.commands` for a terminal (a flag, a command), the Slicer module for Slicer (a button, a dialog). No
library message names a command-line flag or a command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple


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

        def absent(name: str) -> bool:
            try:
                return importlib.util.find_spec(name) is None
            except ModuleNotFoundError:  # the parent package of a dotted name is missing
                return True

        missing = [_PIP_NAMES.get(name, name) for name in modules if absent(name)]
        if missing:
            raise cls(purpose, missing, extra)


_PIP_NAMES = {"skimage": "scikit-image", "google.protobuf": "protobuf"}  # import name -> pip name, where they differ


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
    """A file from `url` has no published SHA256: its hash is `actual`; it is kept at `kept` so that trusting it
    needs no second transfer. `cached`: the file was already in the cache (hashed again now, not downloaded)."""

    def __init__(self, url: str, actual: str, kept: Path, cached: bool = False) -> None:
        self.url, self.actual, self.kept, self.cached = url, actual, Path(kept), cached
        found = f"the cached file {self.kept} has SHA256" if cached else "the downloaded file's SHA256 is"
        super().__init__(f"no published SHA256 for {url}; {found} {actual}")


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


class NameTaken(CacheConflict):
    """Importing a file under the name `name` would replace the different file the cache holds under it."""

    def __init__(self, name: str, path: Path, cached: str, expected: str) -> None:
        self.name = name
        super().__init__(path, cached, expected)


class NotCached(SAMMed3DError):
    """`name` names no checkpoint in the weights cache `folder`; `cached` are the names there are."""

    def __init__(self, name: str, folder: Path, cached: Sequence[str]) -> None:
        self.name, self.folder, self.cached = name, Path(folder), tuple(cached)
        held = ", ".join(self.cached) if self.cached else "nothing"
        super().__init__(f"the weights cache {folder} holds no checkpoint {name!r} (it holds {held})")


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
    """The folder `folder` holds results of a run made with other settings than this run's: `changed` maps each
    setting that differs (the checkpoint's SHA256 among them) to (recorded, now). Continuing would mix two runs."""

    def __init__(self, folder: Path, changed: Dict[str, Tuple[Any, Any]]) -> None:
        self.folder, self.changed = Path(folder), dict(changed)
        listed = "; ".join(f"{name} {was!r} there, {now!r} now" for name, (was, now) in self.changed.items())
        super().__init__(f"{folder} holds results of a run with other settings ({listed})")


class CannotWrite(SAMMed3DError):
    """`path` (a file or a folder the user named, never a temporary file) cannot be written, for `reason`."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"cannot write {path}: {reason}")


class CacheNotWritable(SAMMed3DError):
    """The weights cache `path` cannot be written, for `reason`; `home` is the SAMMED3D_HOME folder it lies in when
    that variable chose it (None: the platform's default data folder)."""

    def __init__(self, path: Path, reason: str, home: Optional[Path] = None) -> None:
        self.path, self.reason, self.home = Path(path), reason, None if home is None else Path(home)
        where = f"SAMMED3D_HOME is {home}, and its" if home is not None else "the"
        super().__init__(f"{where} weights cache {path} cannot be written ({reason})")


class OutputIsInput(SAMMed3DError):
    """The output `output` is the input `input` (`what`: "image", "label folder"...): writing would replace it or
    mix results with the data."""

    def __init__(self, output: Path, input: Path, what: str) -> None:
        self.output, self.input, self.what = Path(output), Path(input), what
        same = "is" if str(output) == str(input) else f"resolves to {input},"
        super().__init__(f"the output {output} {same} the input {what}")


class UnreadableImage(SAMMed3DError):
    """The image file (or DICOM folder) `path` cannot be used: `reason` (truncated, corrupt, a bad header...)."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"cannot read {path}: {reason}")


class NotALabelMap(SAMMed3DError):
    """`path` was given as a label map but is not one: `reason` (non-integer or negative values, an intensity
    image, the image file itself...)."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path} is not a label map: {reason}")


class CaseFailed(SAMMed3DError):
    """Case `case` of a dataset could not be evaluated for `cause`; `rank`: the process that tried, in a run on
    several processes (None: a run on one)."""

    def __init__(self, case: str, cause: BaseException, rank: Optional[int] = None) -> None:
        self.case, self.cause, self.rank = case, cause, rank
        self.where = f"case {case}" if rank is None else f"rank {rank}, case {case}"
        super().__init__(f"{self.where}: {describe(cause)}")


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


class ServerError(SAMMed3DError):
    """A problem with the inference server at `url` (the encoder service of the remote backend)."""

    def __init__(self, url: str, message: str) -> None:
        self.url = url
        super().__init__(message)


class ServerUnreachable(ServerError):
    """No answer from the server at `url` (`reason`: refused, timed out, name not found, connection lost)."""

    def __init__(self, url: str, reason: object) -> None:
        self.reason = reason
        super().__init__(url, f"cannot reach the server at {url} ({reason})")


class NotAV2Server(ServerError):
    """What answers at `url` does not speak the Open Inference Protocol (v2): `reason` says what it did instead."""

    def __init__(self, url: str, reason: str) -> None:
        self.reason = reason
        super().__init__(url, f"{url} is not an Open Inference Protocol (v2) server: {reason}")


class ServerNotReady(ServerError):
    """The server at `url` answers but is not ready (`model`: the model that is not ready, or None for the server)."""

    def __init__(self, url: str, model: Optional[str] = None) -> None:
        self.model = model
        what = f"model {model!r} on the server at {url} is" if model else f"the server at {url} is"
        super().__init__(url, f"{what} not ready yet (still loading, or failed to load)")


class ModelMissing(ServerError):
    """The server at `url` serves no model named `model`."""

    def __init__(self, url: str, model: str) -> None:
        self.model = model
        super().__init__(url, f"the server at {url} has no model {model!r}")


class AccessDenied(ServerError):
    """The server at `url` refused the request with HTTP `status` (401: no or a wrong token; 403: not allowed);
    `token_sent` says whether a token went with it."""

    def __init__(self, url: str, status: int, token_sent: bool, detail: str = "") -> None:
        self.status, self.token_sent = int(status), token_sent
        sent = "with a token it did not accept" if token_sent else "without a token"
        reason = f": {detail}" if detail else ""
        super().__init__(url, f"the server at {url} refused access (HTTP {status}, asked {sent}){reason}")


class TLSVerificationFailed(ServerError):
    """The certificate of the https server at `url` could not be verified (`reason`: self-signed, expired, another
    host name...)."""

    def __init__(self, url: str, reason: object) -> None:
        self.reason = reason
        super().__init__(url, f"the certificate of {url} could not be verified ({reason})")


class InsecureToken(ServerError):
    """A token was given for the plain-http `url` of another machine, where anyone on the network could read it."""

    def __init__(self, url: str) -> None:
        super().__init__(url, f"a token is sent only over https, or over http to this computer; not to {url}")


class CheckpointMismatch(ServerError):
    """The server at `url` encodes with the checkpoint of SHA256 `served` (None: it does not say), the local decoder
    `decoder` belongs to the checkpoint of SHA256 `local` (None: it does not say); they must be the same."""

    def __init__(self, url: str, served: Optional[str], local: Optional[str], decoder: str) -> None:
        self.served, self.local, self.decoder = served, local, decoder
        if served is None:
            message = f"the server at {url} does not report which checkpoint it encodes with (its SHA256)"
        elif local is None:
            message = f"the decoder {decoder} does not record which checkpoint it comes from (its SHA256)"
        else:
            message = (f"the server at {url} encodes with checkpoint SHA256 {served}, but the decoder {decoder} "
                       f"comes from checkpoint SHA256 {local}")
        super().__init__(url, message)
