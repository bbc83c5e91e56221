"""Library errors worded for the terminal: the facts of the error, then the fix as a flag or a `sammed3d` command
(the Slicer module's wording is `SAMMed3DLib.slicer.messages`)."""

from __future__ import annotations

from SAMMed3DLib import errors


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
        return (f"{facts}. If you trust it, run again with --sha256 {error.actual} (the file is kept, so it is not "
                "downloaded again)")
    if isinstance(error, errors.CacheConflict):
        return f"{facts}; remove {error.path}, or import the other file under another --name"
    if isinstance(error, errors.CheckpointNotFound):
        return f"--checkpoint {facts}; add a file under a name with `sammed3d weights import FILE --name NAME`"
    if isinstance(error, errors.MissingPackages):
        return f"{facts}: pip install 'SAMMed3DLib[{error.extra}]'"
    if isinstance(error, errors.DeviceUnavailable):
        return f"{facts}; use --device cpu or --device auto"
    if isinstance(error, errors.NotAnExport):
        return f"{facts}; write one with `sammed3d export-onnx --checkpoint PATH_OR_NAME --output DIR`"
    if isinstance(error, errors.OtherRun):
        return f"--output {facts}; use another --output folder or delete this one"
    if isinstance(error, errors.InvalidChecksum):
        return f"--sha256 {facts}"
    if isinstance(error, errors.CaseFailed):
        cause = error.cause
        detail = terminal_message(cause) if isinstance(cause, errors.SAMMed3DError) else errors.describe(cause)
        return f"rank {error.rank}, case {error.case}: {detail}"
    return facts
