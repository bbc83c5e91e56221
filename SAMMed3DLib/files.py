"""Writing files so that nothing partial is ever visible: readers see the old file or the whole new one."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterator


@contextmanager
def atomic_path(path: Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside `path` to write to. When the block ends without error it replaces `path` in one
    rename (same folder, so the rename is atomic); on error it is removed and `path` is untouched. `suffix` ends the
    temporary name, for writers that choose the format from the extension (SimpleITK)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{suffix}")
    os.close(descriptor)
    temporary = Path(name)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


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
