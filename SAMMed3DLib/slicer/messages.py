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
    return facts + "."
