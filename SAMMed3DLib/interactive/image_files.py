"""What SimpleITK does not check when it reads a volume file, its error messages made readable, and writing one
atomically under the user's name.

SimpleITK reads a cut-off NIfTI (half of a `.nii.gz`, or an intact gzip holding a truncated file) without a word,
filling the missing voxels with zeros, and reads a zero voxel size as 1 mm; it reports a cut-off MetaImage as "No such
file or directory". `check_complete` reads the header itself and refuses such files: the (decompressed) data must
hold every voxel the header promises, and NIfTI voxel sizes must be positive. NRRD files need no check here: ITK's
NRRD reader (teem) counts the bytes itself, and `itk_reason` keeps its explanation.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
import zlib
from pathlib import Path
from typing import BinaryIO, Dict, Optional

from SAMMed3DLib.errors import CannotWrite, UnreadableImage
from SAMMed3DLib.files import atomic_path

_CHUNK = 1 << 20


def check_complete(path: Path) -> None:
    """Raise `UnreadableImage` if the NIfTI or MetaImage file `path` is truncated or corrupt or has a zero or
    negative NIfTI voxel size; other formats are left to their readers."""
    path = Path(path)
    name = path.name.lower()
    try:
        if name.endswith(".nii.gz"):
            with gzip.open(path, "rb") as stream:
                _check_nifti(path, stream)
        elif name.endswith(".nii"):
            with open(path, "rb") as stream:
                _check_nifti(path, stream)
        elif name.endswith((".mha", ".mhd")):
            _check_metaimage(path)
    except EOFError:
        raise UnreadableImage(path, "the file is truncated (its compressed data end before the end marker)") from None
    except (gzip.BadGzipFile, zlib.error) as error:
        raise UnreadableImage(path, f"the file is corrupt (its compressed data do not decompress: {error})") from None


def _remaining_bytes(stream: BinaryIO) -> int:
    """Bytes from the stream's position to its end, decompressing as needed (without keeping them)."""
    buffer = bytearray(_CHUNK)
    total = 0
    while True:
        count = stream.readinto(buffer)
        if not count:
            return total
        total += count


def _truncated(path: Path, voxels: int, needed: int, found: int) -> UnreadableImage:
    return UnreadableImage(
        path, f"the file is truncated: its header promises {voxels} voxels ({needed} bytes of data), it holds "
        f"{max(found, 0)} bytes"
    )


def _check_nifti(path: Path, stream: BinaryIO) -> None:
    header = stream.read(540)
    for endian in "<>":
        size = struct.unpack(endian + "i", header[:4])[0] if len(header) >= 4 else 0
        if size in (348, 540):
            break
    else:
        raise UnreadableImage(path, "not a NIfTI file (its header does not start with the NIfTI header size)")
    if size == 348:
        magic = header[344:348]
        dims = struct.unpack(endian + "8h", header[40:56])
        bitpix = struct.unpack(endian + "h", header[72:74])[0]
        pixdim = struct.unpack(endian + "8f", header[76:108])
        offset = struct.unpack(endian + "f", header[108:112])[0]
    else:
        magic = header[4:8]
        bitpix = struct.unpack(endian + "h", header[14:16])[0]
        dims = struct.unpack(endian + "8q", header[16:80])
        pixdim = struct.unpack(endian + "8d", header[104:168])
        offset = struct.unpack(endian + "q", header[168:176])[0]
    if magic[:3] not in (b"n+1", b"n+2"):  # a header of a .hdr/.img pair, or not NIfTI: ITK's decision
        return
    count = dims[0]
    if not 1 <= count <= 7 or any(n < 1 for n in dims[1 : count + 1]):
        raise UnreadableImage(path, f"the NIfTI header has an invalid size (dim {list(dims[: count + 1])})")
    spacing = pixdim[1 : min(count, 3) + 1]
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        shown = ", ".join(f"{s:g}" for s in spacing)
        raise UnreadableImage(path, f"the NIfTI header gives a zero or negative voxel size (pixdim {shown} mm)")
    voxels = math.prod(dims[1 : count + 1])
    needed = voxels * bitpix // 8
    found = len(header) + _data_bytes(stream, compressed=False) - int(offset)
    if found < needed:
        raise _truncated(path, voxels, needed, found)


# MetaImage element types -> bytes (MetaIO's metaTypes.h).
_META_SIZES = {
    "MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4, "MET_LONG": 4,
    "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8,
}


def _check_metaimage(path: Path) -> None:
    fields: Dict[str, str] = {}
    with open(path, "rb") as stream:
        for _ in range(200):  # a MetaImage header is a few dozen `Key = Value` lines, ElementDataFile last
            line = stream.readline(4096)
            if not line:
                return
            key, _, value = line.decode("latin-1").partition("=")
            fields[key.strip()] = value.strip()
            if key.strip() == "ElementDataFile":
                break
        else:
            return
        size = _META_SIZES.get(fields.get("ElementType", ""))
        dims = [int(n) for n in re.findall(r"-?\d+", fields.get("DimSize", ""))]
        if size is None or not dims or fields["ElementDataFile"].split()[0].upper() == "LIST":
            return
        voxels = math.prod(dims) * int(fields.get("ElementNumberOfChannels", "1") or 1)
        needed = voxels * size
        compressed = fields.get("CompressedData", "false").lower() == "true"
        if fields["ElementDataFile"] == "LOCAL":
            found = _data_bytes(stream, compressed)
        else:
            data = path.parent / fields["ElementDataFile"]
            if not data.is_file():
                raise UnreadableImage(path, f"its data file {data} does not exist")
            skip = int(fields.get("HeaderSize", "0") or 0)
            with open(data, "rb") as raw:
                raw.seek(max(skip, 0))
                found = _data_bytes(raw, compressed)
    if found < needed:
        raise _truncated(path, voxels, needed, found)


def _data_bytes(stream: BinaryIO, compressed: bool) -> int:
    """Bytes of data from the stream's position to its end: a file's size, a gzip stream's decompressed length,
    or (`compressed`: a MetaImage's zlib/gzip data) the length its inflation gives."""
    if not compressed:
        if isinstance(stream, gzip.GzipFile):
            return _remaining_bytes(stream)
        start = stream.tell()
        return stream.seek(0, os.SEEK_END) - start
    inflate = zlib.decompressobj(47)  # zlib or gzip, as MetaIO reads it
    total = 0
    for chunk in iter(lambda: stream.read(_CHUNK), b""):
        total += len(inflate.decompress(chunk))
        if inflate.eof:
            break
    if not inflate.eof:
        raise EOFError
    return total


_LOCATION = re.compile(r"^(Exception thrown in SimpleITK \w+: )?\S+\.(cxx|hxx|h|cpp):\d+:\s*$")
_PREFIX = re.compile(r"^(ITK ERROR|sitk::ERROR|ITK WARNING)?:?\s*(\w+\(0x[0-9a-fA-F]+\):\s*)?")
_NUMBERS = re.compile(r"^[-+0-9.eE ,\[\]]+$")


def itk_reason(error: BaseException, replace: Optional[Dict[str, str]] = None) -> str:
    """ITK's explanation in one line: without the C++ source location and object address, every line kept (a
    matrix's rows joined with "; "), except that of teem's NRRD error chains only the last link is kept.
    `replace` maps text (a temporary file name) to what the user knows (their path)."""
    text = str(error)
    for old, new in (replace or {}).items():
        text = text.replace(old, new)
    lines = [line.strip() for line in text.splitlines()]
    lines = [_PREFIX.sub("", line, count=1) for line in lines if line and not _LOCATION.match(line)]
    teem = [line for line in lines if line.startswith("[nrrd]")]
    if teem:
        return re.sub(r"^\[nrrd\] \w+: ", "", teem[-1])
    joined = ""
    for line in lines:
        separator = "; " if _NUMBERS.match(line) and joined and _NUMBERS.search(joined.split()[-1]) else " "
        joined = f"{joined}{separator}{line}" if joined else line
    return joined.strip() or type(error).__name__


def write_image(image, path: Path, suffix: str) -> None:
    """Write a SimpleITK image to `path` (compressed where the format allows) through a temporary file whose
    `suffix` tells SimpleITK the format; an ITK error raises `CannotWrite` naming `path`, not the temporary file."""
    import SimpleITK as sitk

    with atomic_path(path, suffix) as temporary:
        try:
            sitk.WriteImage(image, str(temporary), useCompression=True)
        except RuntimeError as error:
            raise CannotWrite(path, itk_reason(error, {str(temporary): str(path)})) from None
