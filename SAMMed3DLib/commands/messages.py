"""Library errors worded for the terminal: the facts of the error, then the fix as a flag or a `sammed3d` command
(the Slicer module's wording is `SAMMed3DLib.slicer.messages`)."""

from __future__ import annotations

from SAMMed3DLib import errors


def plural(count: int, noun: str, nouns: str = "") -> str:
    """"1 click", "3 clicks"; `nouns` where adding an s is wrong ("regions of interest")."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def terminal_message(error: BaseException) -> str:
    """One line: what is wrong, and what to type."""
    facts = str(error).rstrip(".")
    if isinstance(error, errors.NotDownloadable):
        return (f"{facts}; download it in a browser, then run `sammed3d weights import FILE --name {error.name}`")
    if isinstance(error, errors.CheckpointOffline):
        return (f"{facts}. If this machine is offline, download the file on one that is online and run "
                "`sammed3d weights import FILE` here")
    if isinstance(error, errors.DownloadInterrupted):
        return f"{facts}; run the same command again to resume"
    if isinstance(error, errors.ChecksumUnknown):
        kept = "" if error.cached else " (the file is kept, so it is not downloaded again)"
        return f"{facts}. If you trust it, run again with --sha256 {error.actual}{kept}"
    if isinstance(error, errors.NameTaken):
        return f"{facts}; add --replace to replace it, or import the file under another --name"
    if isinstance(error, errors.CacheConflict):
        return (f"{facts}; remove it with `sammed3d weights remove {error.path.name}` and download again, or import "
                "the other file under another --name")
    if isinstance(error, errors.NotCached):
        return f"{facts}; `sammed3d weights list` shows the cache"
    if isinstance(error, errors.CacheNotWritable):
        return f"{facts}; set SAMMED3D_HOME to a writable folder (or give --checkpoint a checkpoint file)"
    if isinstance(error, errors.CheckpointNotFound):
        return f"--checkpoint {facts}; add a file under a name with `sammed3d weights import FILE --name NAME`"
    if isinstance(error, errors.MissingPackages):
        return f"{facts}: pip install 'SAMMed3DLib[{error.extra}]'"
    if isinstance(error, errors.DeviceUnavailable):
        return f"{facts}; use --device cpu or --device auto"
    if isinstance(error, errors.NotAnExport):
        return f"{facts}; write one with `sammed3d export-onnx --checkpoint PATH_OR_NAME --output DIR`"
    if isinstance(error, errors.OtherRun):
        return f"--output {facts}; run with the recorded settings to continue it, or use another --output folder"
    if isinstance(error, errors.OutputIsInput):
        return f"--output: {facts}; nothing was written: choose another --output"
    if isinstance(error, errors.CaseFailed):
        return f"case {error.case}: {terminal_message(error.cause)}"
    if isinstance(error, errors.InvalidChecksum):
        return f"--sha256 {facts}"
    return facts
