"""Published SAM-Med3D checkpoints: a registry, a verified download cache, and resolving a path or a name to a file.

A file enters the cache (`$SAMMED3D_HOME/weights`, default a per-user data folder) only after its SHA256 matched,
by an atomic rename of the finished `.part` file, so a file in the cache is trusted and never downloaded twice.
Downloads resume from the `.part` file with an HTTP Range request, after a dropped connection in the same call
(a few retries) or in a later call. Nothing is downloaded at import time.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from SAMMed3DLib.errors import (
    CacheConflict,
    CacheNotWritable,
    CannotWrite,
    CheckpointNotFound,
    CheckpointOffline,
    ChecksumMismatch,
    ChecksumUnknown,
    DownloadFailed,
    DownloadInterrupted,
    InvalidChecksum,
    NameTaken,
    NotCached,
    NotDownloadable,
    SAMMed3DError,
)
from SAMMed3DLib.files import atomic_path, check_writable

Progress = Callable[[int, Optional[int]], None]  # (bytes received, total bytes or None while unknown)

# File formats of checkpoints in the cache (imported files keep theirs: the loader reads by suffix).
CHECKPOINT_SUFFIXES = (".pth", ".safetensors")

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Checkpoint:
    """One published checkpoint. `url` is None where it is only offered through a web page (Google Drive),
    and `sha256`/`size` are None where the publisher shows no hash: say so rather than guess."""

    name: str
    filename: str
    url: Optional[str]
    page: str
    size: Optional[int]  # bytes, as the host shows it (approximate)
    sha256: Optional[str]
    description: str


REGISTRY = (
    Checkpoint(
        name="turbo",
        filename="sam_med3d_turbo.pth",
        url="https://huggingface.co/blueyo0/SAM-Med3D/resolve/main/sam_med3d_turbo.pth",
        page="https://huggingface.co/blueyo0/SAM-Med3D/blob/main/sam_med3d_turbo.pth",
        size=402_000_000,
        sha256="899a46d04d3b70f723282ceb489149373558bf0aaba389a346f5ab57da5cdd3c",
        description="SAM-Med3D-turbo, fine-tuned on 44 datasets; the recommended checkpoint",
    ),
    Checkpoint(
        name="base",
        filename="sam_med3d.pth",
        url=None,
        page="https://drive.google.com/file/d/1PFeUjlFMAppllS9x1kAWyCYUJM9re2Ub/view",
        size=None,
        sha256=None,
        description="SAM-Med3D as in the paper (Google Drive only; no published hash)",
    ),
    Checkpoint(
        name="organ",
        filename="sam_med3d_organ.pth",
        url=None,
        page="https://drive.google.com/file/d/1kKpjIwCsUWQI-mYZ2Lww9WZXuJxc3FvU/view",
        size=None,
        sha256=None,
        description="SAM-Med3D fine-tuned for organs (Google Drive only; no published hash)",
    ),
    Checkpoint(
        name="brain",
        filename="sam_med3d_brain.pth",
        url=None,
        page="https://drive.google.com/file/d/1otbhZs9uugSWkAbcQLLSmPB8jo5rzFL2/view",
        size=None,
        sha256=None,
        description="SAM-Med3D fine-tuned for brain structures (Google Drive only; no published hash)",
    ),
)


def find(name: str) -> Optional[Checkpoint]:
    """The registry entry called `name` (or whose file name is `name`), else None."""
    for entry in REGISTRY:
        if name in (entry.name, entry.filename):
            return entry
    return None


def home() -> Path:
    """`$SAMMED3D_HOME`, else the per-user data folder of this platform."""
    if os.environ.get("SAMMED3D_HOME"):
        return Path(os.environ["SAMMED3D_HOME"]).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "sammed3d"


def cache_dir() -> Path:
    return home() / "weights"


def writable_cache_dir() -> Path:
    """The cache folder, created if needed, after checking that files can be created in it (`CacheNotWritable`
    names SAMMED3D_HOME when that variable chose it): before a download or an import starts."""
    folder = cache_dir()
    try:
        check_writable(folder, folder=True)
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CacheNotWritable(folder, error.strerror or str(error), _chosen_home()) from None
    except CannotWrite as error:
        raise CacheNotWritable(folder, error.reason, _chosen_home()) from None
    return folder


def _chosen_home() -> Optional[Path]:
    return home() if os.environ.get("SAMMED3D_HOME") else None


def sha256_of(path: Path, on_progress: Optional[Progress] = None) -> str:
    """The file's SHA256; `on_progress(bytes read, file size)` as it is read."""
    digest = hashlib.sha256()
    size = os.path.getsize(path)
    done = 0
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(_CHUNK), b""):
            digest.update(chunk)
            done += len(chunk)
            if on_progress is not None:
                on_progress(done, size)
    return digest.hexdigest()


def _normalise_hash(sha256: Optional[str]) -> Optional[str]:
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise InvalidChecksum(sha256)
    return value


def cached(name: str) -> Optional[Path]:
    """The cached file for a registry name or an imported name, or None."""
    entry = find(name)
    candidates = [entry.filename] if entry else [_imported_filename(name, suffix) for suffix in CHECKPOINT_SUFFIXES]
    return next((cache_dir() / c for c in candidates if (cache_dir() / c).is_file()), None)


def cached_file(name: str) -> Path:
    """The cached file of a registry or imported name (or a cached file's own name); `NotCached` if there is none."""
    hit = cached(name)  # a cached file's own name is an imported name that already ends in its suffix
    if hit is None:
        raise NotCached(name, cache_dir(), [path.stem for path in cached_files()])
    return hit


def cached_files() -> list[Path]:
    """The checkpoint files in the cache, by name."""
    folder = cache_dir()
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.suffix in CHECKPOINT_SUFFIXES and path.is_file())


def partial_download(target: Path) -> Path:
    """Where the download of the cache file `target` grows until it is verified (a later download resumes from it)."""
    return target.with_name(target.name + ".part")


def remove(name: str) -> list[Path]:
    """Delete a cached checkpoint (a registry or imported name, or its file name) and a partial download of it;
    returns the deleted paths."""
    path = cached_file(name)
    removed = [p for p in (path, partial_download(path)) if p.is_file()]
    for p in removed:
        p.unlink()
    return removed


def _imported_filename(name: str, suffix: str) -> str:
    """The cache's file name for an imported checkpoint: the name, with the imported file's format as suffix."""
    if not name or any(c in name for c in "/\\:") or name.startswith("."):
        raise SAMMed3DError(f"checkpoint name {name!r} is not usable as a file name; use letters, digits, - and _")
    return name if name.endswith(suffix) else f"{name}{suffix}"


@dataclass(frozen=True)
class Source:
    """What a download fetches and what it must be: the URL, the cache's file name, the expected SHA256 (None where
    nobody published one) and the size the host shows (approximate, None if unknown)."""

    url: str
    filename: str
    sha256: Optional[str]
    size: Optional[int] = None

    @property
    def target(self) -> Path:
        """Where the verified file lives in the cache."""
        return cache_dir() / self.filename

    @property
    def part(self) -> Path:
        return partial_download(self.target)


def source(name_or_url: str, sha256: Optional[str] = None) -> Source:
    """The download a registry name or a URL stands for. The SHA256 is the registry's, or `sha256`; a URL whose
    file name is a published checkpoint's (a mirror) gets that checkpoint's published hash."""
    expected = _normalise_hash(sha256)
    entry = find(name_or_url)
    if entry is not None:
        if entry.url is None:
            raise NotDownloadable(entry.name, entry.page)
        if expected and entry.sha256 and expected != entry.sha256:
            raise SAMMed3DError(
                f"the SHA256 asked for ({expected}) differs from the published hash of {entry.name!r} ({entry.sha256})"
            )
        return Source(entry.url, entry.filename, expected or entry.sha256, entry.size)
    parsed = urllib.parse.urlparse(name_or_url)
    if parsed.scheme not in ("http", "https") or not parsed.path.rstrip("/"):
        known = ", ".join(e.name for e in REGISTRY)
        raise SAMMed3DError(f"{name_or_url!r} is neither a known checkpoint ({known}) nor an http(s) URL of a file")
    filename = Path(parsed.path.rstrip("/")).name
    entry = find(filename)
    if entry is not None and entry.sha256:
        if expected and expected != entry.sha256:
            raise SAMMed3DError(
                f"{filename} is the name of the published {entry.name!r} checkpoint, whose SHA256 is "
                f"{entry.sha256}, not {expected}"
            )
        return Source(name_or_url, filename, entry.sha256, entry.size)
    return Source(name_or_url, filename, expected)


def download(
    name_or_url: str,
    sha256: Optional[str] = None,
    on_progress: Optional[Progress] = None,
    **options: float,
) -> Path:
    """Download a registry checkpoint or a URL into the cache and return its path: `fetch(source(...))`."""
    return fetch(source(name_or_url, sha256), on_progress, **options)


def fetch(
    wanted: Source,
    on_progress: Optional[Progress] = None,
    retries: int = 3,
    timeout: float = 30.0,
    retry_delay: float = 2.0,
) -> Path:
    """The verified file for `wanted` in the cache, downloaded (or resumed) if it is not there yet.

    `on_progress(received, total)` is called as bytes arrive (total None while unknown). A download without any
    expected hash is kept as `.part` (so trusting its hash later needs no second transfer) and refused with the hash
    it computed (`ChecksumUnknown`). A mismatch deletes the `.part` file: nothing is left in the cache. A file
    already cached under the name is hashed again and returned only if it has the expected hash; without one it is
    refused with its hash, like a new download (never passed off as verified).
    """
    target, part, expected = wanted.target, wanted.part, wanted.sha256
    if target.is_file():
        cached_hash = sha256_of(target)
        if expected is None:
            raise ChecksumUnknown(wanted.url, cached_hash, target, cached=True)
        if cached_hash != expected:
            raise CacheConflict(target, cached_hash, expected)
        return target
    writable_cache_dir()
    for attempt in range(retries):
        try:
            _fetch(wanted.url, part, on_progress, timeout, wanted.size)
            break
        except urllib.error.URLError as error:  # no connection at all: offline, DNS, proxy
            raise CheckpointOffline(wanted.url, error.reason) from None
        except (OSError, EOFError, http.client.HTTPException) as error:  # dropped or timed out: resume
            if attempt + 1 == retries:
                raise DownloadInterrupted(wanted.url, error, part) from None
            time.sleep(retry_delay)
    actual = sha256_of(part)
    if expected is None:
        raise ChecksumUnknown(wanted.url, actual, part)
    if actual != expected:
        part.unlink()
        raise ChecksumMismatch(target, expected, actual, source=wanted.url, detail="; nothing was stored")
    os.replace(part, target)  # same folder: readers see the whole file or nothing
    return target


def _fetch(url: str, part: Path, on_progress: Optional[Progress], timeout: float, size: Optional[int]) -> None:
    """Append the rest of `url` to `part` (Range request from its current size); complete when this returns."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "sammed3d", "Accept-Encoding": "identity"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # the .part file is already complete
            return
        raise DownloadFailed(url, f"HTTP {error.code} {error.reason}") from None
    with response:
        if offset and response.status != 206:  # the server ignored the range: start over
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else size
        received = offset
        if on_progress is not None:
            on_progress(received, total)
        with open(part, "ab" if offset else "wb") as out:
            while True:
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                received += len(chunk)
                if on_progress is not None:
                    on_progress(received, total)
        if length is not None and received < total:
            raise EOFError(f"connection closed after {received} of {total} bytes")


def verify(
    path: Path, sha256: Optional[str] = None, on_progress: Optional[Progress] = None
) -> tuple[str, Optional[Checkpoint]]:
    """SHA256 of `path` and the registry entry it matches; raise if it matches neither `sha256` nor the registry
    entry of the same file name. `on_progress` as for `sha256_of`."""
    path = Path(path)
    if not path.is_file():
        raise SAMMed3DError(f"{path} is not a file")
    expected = _normalise_hash(sha256)
    actual = sha256_of(path, on_progress)
    match = next((e for e in REGISTRY if e.sha256 == actual), None)
    if expected is not None and actual != expected:
        raise ChecksumMismatch(path, expected, actual)
    same_name = find(path.name)
    if expected is None and same_name is not None and same_name.sha256 and match is None:
        raise ChecksumMismatch(path, same_name.sha256, actual,
                               detail=f" (the published {same_name.name!r} checkpoint): damaged, or another file")
    return actual, match


def import_file(
    path: Path,
    name: Optional[str] = None,
    sha256: Optional[str] = None,
    replace: bool = False,
    on_progress: Optional[Progress] = None,
) -> Path:
    """Copy a checkpoint the user got elsewhere into the cache, after checking its hash against `sha256` and the
    registry. A registry name whose hash is published must match it; any other file must load as a SAM-Med3D network
    (keys and shapes) and is stored as `<name>.pth`, or `<name>.safetensors` for that format. A different file
    already cached under the name is replaced only with `replace` (`NameTaken` otherwise); the same file is left as
    it is. `on_progress(bytes, total)` follows the hashing and the copy."""
    path = Path(path)
    folder = writable_cache_dir()
    size = path.stat().st_size if path.is_file() else 0

    def hashing(done: int, _: Optional[int]) -> None:
        if on_progress is not None:
            on_progress(done, 2 * size)

    actual, match = verify(path, sha256, on_progress=hashing)
    entry = find(name) if name else match
    if entry is not None and entry.sha256 and entry.sha256 != actual:
        raise ChecksumMismatch(path, entry.sha256, actual, detail=f" (the published {entry.name!r} checkpoint)")
    if entry is None and name is None:
        name = path.stem
    suffix = ".safetensors" if path.suffix == ".safetensors" else ".pth"  # load_sam_med3d reads by suffix
    filename = entry.filename if entry else _imported_filename(name, suffix)
    target = folder / filename
    if target.is_file():
        cached_hash = sha256_of(target)
        if cached_hash == actual:
            return target
        if not replace:
            raise NameTaken(entry.name if entry else name, target, cached_hash, actual)
    if entry is None or entry.sha256 is None:  # no published hash to vouch for it: it must load as SAM-Med3D
        from SAMMed3DLib.model import load_sam_med3d

        load_sam_med3d(path)
    with atomic_path(target) as temporary:
        copied = _copy(path, temporary, lambda done: hashing(size + done, None))
        if copied != actual:
            raise SAMMed3DError(f"{path} changed while it was being copied; try again")
    return target


def _copy(source: Path, target: Path, on_bytes: Callable[[int], None]) -> str:
    """Copy `source` to `target` in chunks, reporting bytes copied; returns the SHA256 of what was written."""
    digest = hashlib.sha256()
    done = 0
    with open(source, "rb") as reading, open(target, "wb") as writing:
        for chunk in iter(lambda: reading.read(_CHUNK), b""):
            writing.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            on_bytes(done)
    return digest.hexdigest()


def resolve(path_or_name: str, on_progress: Optional[Progress] = None) -> Path:
    """A checkpoint file for a path or a name: an existing path, a cached name, or a registry name downloaded now
    (`on_progress` as for `fetch`)."""
    path = Path(path_or_name).expanduser()
    if path.is_file():
        return path
    known = [e.name for e in REGISTRY]
    if path.exists():
        raise CheckpointNotFound(path_or_name, known, reason="a folder, not a checkpoint file")
    if "/" not in path_or_name and os.sep not in path_or_name:  # a name (or a cached file name)
        hit = cached(path_or_name)
        if hit is not None:
            return hit
        if find(path_or_name) is not None:
            return download(path_or_name, on_progress=on_progress)
    raise CheckpointNotFound(path_or_name, known)
