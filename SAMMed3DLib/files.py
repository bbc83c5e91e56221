"""Writing files as users expect: readers see the old file or the whole new one, never a partial one; new files get
the mode the user's umask gives (0644 under umask 022), as any other program's would; nothing is left behind.

Every temporary name says whose it is: `.NAME~HOST-PID-RANDOM.tmp[SUFFIX]` beside the file it becomes. A run that
was killed (SIGKILL, power loss) cannot remove its own, so every write into a folder first removes the temporary
files there whose process is gone (same host, PID not running) or that have not changed for `ABANDONED_AFTER_S`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from SAMMed3DLib.errors import CannotWrite

ABANDONED_AFTER_S = 24 * 3600  # a temporary file untouched this long is abandoned whoever made it (another host)
_HOST = hashlib.sha256(socket.gethostname().encode("utf-8")).hexdigest()[:6]
_TEMPORARY = re.compile(r"^\..+~(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[0-9a-f]{8}\.tmp(\..+)?$")


def _cannot_write(path: Path, error: OSError) -> CannotWrite:
    return CannotWrite(path, error.strerror or str(error))


def _temporary_name(path: Path, suffix: str) -> Path:
    return path.with_name(f".{path.name}~{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.tmp{suffix}")


def _create_temporary(path: Path, suffix: str, make: Callable[[Path], None]) -> Path:
    """A new temporary file or folder beside `path`, under a name nobody else has: `make(name)` creates it and
    raises FileExistsError if the name is taken."""
    while True:
        temporary = _temporary_name(path, suffix)
        try:
            make(temporary)
            return temporary
        except FileExistsError:
            continue


def _create_file(path: Path, suffix: str) -> Path:
    """A new empty temporary file beside `path`. Created with mode 0666 so that the kernel applies the umask
    (mkstemp's 0600 would make results unreadable to everyone else)."""
    def make(name: Path) -> None:
        os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))

    return _create_temporary(path, suffix, make)


def _abandoned(entry: Path) -> bool:
    """Whether `entry` is a temporary file or folder of this module that nobody will finish."""
    match = _TEMPORARY.match(entry.name)
    if match is None:
        return False
    try:
        if time.time() - entry.lstat().st_mtime > ABANDONED_AFTER_S:
            return True
    except FileNotFoundError:
        return False
    pid = int(match["pid"])
    if match["host"] != _HOST or pid == os.getpid() or sys.platform == "win32":  # os.kill(pid, 0) kills on Windows
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, owned by another user
        return False
    return False


def remove_abandoned(folder: Path) -> list[Path]:
    """Remove the temporary files and folders that killed runs left in `folder`; returns what was removed."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        if _abandoned(entry):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path: Path, folder: bool = False) -> None:
    """Raise `CannotWrite` unless `path` (a file, or with `folder` a folder, created if missing) can be written:
    before any expensive work, so that a read-only or mistyped output is found first. Creates nothing."""
    path = Path(path)
    if path.is_dir() and not folder:
        raise CannotWrite(path, "it is a folder")
    if path.exists() and not path.is_dir() and folder:
        raise CannotWrite(path, "it is a file, not a folder")
    where = _existing_ancestor(path if folder else path.parent)
    if not where.is_dir():
        raise CannotWrite(path, f"{where} is a file, not a folder")
    try:
        os.unlink(_create_file(where / ".write-check", ""))
    except OSError as error:
        raise _cannot_write(path, error) from None


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _cannot_write(path, error) from None


@contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside `path` to write to. When the block ends without error it replaces `path` in one
    rename (same folder, so the rename is atomic); on error it is removed and `path` is untouched. `suffix` ends the
    temporary name, for writers that choose the format from the extension (SimpleITK). An OSError about the
    temporary file (or about no file: a full disk) is raised as `CannotWrite` naming `path`."""
    path = Path(path)
    _make_parent(path)
    remove_abandoned(path.parent)
    try:
        temporary = _create_file(path, suffix)
    except OSError as error:
        raise _cannot_write(path, error) from None
    try:
        yield temporary
        os.replace(temporary, path)
    except OSError as error:
        named = {os.fspath(name) for name in (error.filename, error.filename2) if name is not None}
        if named and str(temporary) not in named:  # about another file (an input read inside the block)
            raise
        raise _cannot_write(path, error) from None
    finally:
        temporary.unlink(missing_ok=True)


@contextmanager
def temporary_folder(path: Path) -> Iterator[Path]:
    """A new folder beside `path` (mode from the umask) to build content in before it is renamed into place; removed
    with what is left in it when the block ends."""
    path = Path(path)
    _make_parent(path)
    remove_abandoned(path.parent)
    try:
        staging = _create_temporary(path, "", lambda name: name.mkdir(mode=0o777))  # the umask applies
    except OSError as error:
        raise _cannot_write(path, error) from None
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_atomic(path: Path, write: Callable[[IO[Any]], None], binary: bool = False) -> None:
    """Call `write(stream)` on a stream to a temporary file that replaces `path` when it returns (`atomic_path`);
    text is UTF-8 with newlines as written."""
    with atomic_path(path) as temporary, open(
        temporary, "wb" if binary else "w", newline=None if binary else "", encoding=None if binary else "utf-8"
    ) as stream:
        write(stream)


def write_json(path: Path, content: Any) -> None:
    """`content` as indented JSON, atomically."""
    write_atomic(path, lambda stream: json.dump(content, stream, indent=2))


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file or folder (links and `..` resolved); False if either does not exist."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
