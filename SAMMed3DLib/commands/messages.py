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
