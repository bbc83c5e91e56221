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
        cause = error.cause
        detail = terminal_message(cause) if isinstance(cause, errors.SAMMed3DError) else errors.describe(cause)
        return f"{error.where}: {detail}"
    if isinstance(error, errors.InvalidChecksum):
        return f"--sha256 {facts}"
    if isinstance(error, errors.ServerError):
        return _server_message(error, facts)
    return facts


def _server_message(error: errors.ServerError, facts: str) -> str:
    if isinstance(error, errors.ServerUnreachable):
        return f"{facts}; check --server and that the server runs (`sammed3d serve` or Triton)"
    if isinstance(error, errors.NotAV2Server):
        return f"{facts}; --server takes the address of `sammed3d serve`, Triton or KServe, like http://HOST:8000"
    if isinstance(error, errors.ServerNotReady):
        return f"{facts}; try again when it has loaded"
    if isinstance(error, errors.ModelMissing):
        return f"{facts}; serve the encoder there with `sammed3d serve` or `sammed3d export-triton`"
    if isinstance(error, errors.AccessDenied):
        if error.status == 403:
            return f"{facts}; ask the server's administrator for access"
        return f"{facts}; give the server's token with --token-file FILE"
    if isinstance(error, errors.TLSVerificationFailed):
        return (f"{facts}; if the server's certificate authority is your own, set SSL_CERT_FILE to its certificate "
                "file, and use the host name the certificate names")
    if isinstance(error, errors.InsecureToken):
        return f"{facts}; use the server's https:// address in --server"
    if isinstance(error, errors.CheckpointMismatch):
        return (f"{facts}; give --checkpoint the decoder of the server's checkpoint (`sammed3d export-onnx "
                "--checkpoint THAT_CHECKPOINT --output DIR`)")
    return facts
