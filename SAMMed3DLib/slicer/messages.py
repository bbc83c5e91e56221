"""Library errors worded for a 3D Slicer user: the facts of the error, then the fix as buttons and dialogs of the
SAM-Med3D module and the Segment Editor (the terminal's wording is `SAMMed3DLib.commands.messages`)."""

from __future__ import annotations

from SAMMed3DLib import errors

MODULE = "the SAM-Med3D module"


def user_message(error: BaseException) -> str:
    """One paragraph for the status line or a dialog: what is wrong, and what to do in Slicer."""
    facts = str(error).rstrip(".")
    if isinstance(error, errors.NotDownloadable):
        return (f"{facts}. Download it with a web browser, then choose 'Local file' in {MODULE} and select the "
                "downloaded file.")
    if isinstance(error, errors.CheckpointOffline):
        return (f"{facts}. If this computer is offline, download the file on one that is online, then choose "
                f"'Local file' in {MODULE}.")
    if isinstance(error, errors.DownloadInterrupted):
        return f"{facts}. Click 'Download' in {MODULE} again: it continues where it stopped."
    if isinstance(error, errors.ChecksumUnknown):
        return (f"{facts}. Only checkpoints with a published hash are downloaded here; for another file choose "
                f"'Local file' in {MODULE}.")
    if isinstance(error, (errors.ChecksumMismatch, errors.CacheConflict)):
        return f"{facts}. The file was not used. Download it again, or choose another file in {MODULE}."
    if isinstance(error, errors.CacheNotWritable):
        return (f"{facts}. Start Slicer with the environment variable SAMMED3D_HOME set to a writable folder, or "
                f"choose 'Local file' in {MODULE}.")
    if isinstance(error, errors.CheckpointNotFound):
        return f"{facts}. Choose a model in {MODULE}."
    if isinstance(error, errors.MissingPackages):
        return f"{facts}. Click 'Install dependencies' in {MODULE}."
    if isinstance(error, errors.DeviceUnavailable):
        return f"{facts}. Choose the device 'auto' or 'cpu' in {MODULE}."
    if isinstance(error, errors.NotAnExport):
        return (f"{facts}. For ONNX Runtime, choose the folder that holds encoder.onnx and decoder.onnx in {MODULE}, "
                "or choose the PyTorch backend.")
    if isinstance(error, errors.UnknownChoice):
        return f"{facts}. Check the choices in {MODULE}."
    if isinstance(error, errors.ServerError):
        return _server_message(error, facts)
    return facts + "."


def _server_message(error: errors.ServerError, facts: str) -> str:
    """The remote server backend's errors: the server's URL, token and the local decoder are set in the module."""
    if isinstance(error, errors.ServerUnreachable):
        return (f"{facts}. Check the server URL in {MODULE} and that the server is running, then click "
                "'Test connection'.")
    if isinstance(error, errors.NotAV2Server):
        return (f"{facts}. Enter the address of the SAM-Med3D encoder server (like http://HOST:8000) in {MODULE}.")
    if isinstance(error, errors.ServerNotReady):
        return f"{facts}. Wait until the server has loaded the model, then click 'Test connection' in {MODULE}."
    if isinstance(error, errors.ModelMissing):
        return (f"{facts}. Ask the server's administrator to serve the SAM-Med3D encoder there, or enter another "
                f"server in {MODULE}.")
    if isinstance(error, errors.AccessDenied):
        if error.status == 403:
            return f"{facts}. Ask the server's administrator for access."
        return f"{facts}. Enter the server's token in {MODULE}."
    if isinstance(error, errors.TLSVerificationFailed):
        return (f"{facts}. Enter the server's address with the host name its certificate names; if your institution "
                "signs its own certificates, add its certificate authority to this computer's trusted certificates.")
    if isinstance(error, errors.InsecureToken):
        return f"{facts}. Enter the server's https:// address in {MODULE}."
    if isinstance(error, errors.CheckpointMismatch):
        return (f"{facts}. Choose the decoder exported from the checkpoint the server uses in {MODULE}, or a server "
                "that encodes with this one.")
    return facts + "."
