"""Files as users expect: the umask's mode, no partial file, temporary files of killed runs removed by the next
write into the folder (a real SIGKILL), and errors that name the user's path, never a temporary file."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from SAMMed3DLib import files
from SAMMed3DLib.errors import SAMMed3DError

REPO = Path(__file__).resolve().parents[1]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture()
def umask():
    """Set the process umask for one test; restored after it."""
    previous = os.umask(0o022)
    yield lambda value: os.umask(value)
    os.umask(previous)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_get_the_umasks_mode(tmp_path, umask, mask, expected):
    umask(mask)
    files.write_json(tmp_path / "summary.json", {"a": 1})
    files.write_atomic(tmp_path / "plot.png", lambda stream: stream.write(b"\x89PNG"), binary=True)
    with files.atomic_path(tmp_path / "mask.nii.gz", ".nii.gz") as temporary:
        temporary.write_bytes(b"voxels")
    for name in ("summary.json", "plot.png", "mask.nii.gz"):
        assert mode(tmp_path / name) == expected, name
    with files.temporary_folder(tmp_path / "cache") as staging:  # a folder built, then renamed into place
        os.rename(staging, tmp_path / "cache")
    assert mode(tmp_path / "cache") == expected | 0o111 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "mask.nii.gz", "plot.png", "summary.json"]


WRITER = """
import sys, time
from pathlib import Path
from SAMMed3DLib import files
with files.atomic_path(Path(sys.argv[1])) as temporary:
    temporary.write_bytes(b"x" * 1_000_000)
    print(temporary, flush=True)
    time.sleep(120)
"""


def start_writer(target: Path) -> tuple[subprocess.Popen, Path]:
    """A process in the middle of writing `target` (its temporary file exists); returns it and that file."""
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, cwd=REPO,
                               encoding="utf-8")
    temporary = Path(process.stdout.readline().strip())
    assert temporary.is_file() and temporary.parent == target.parent
    return process, temporary


def test_the_next_write_removes_what_a_killed_run_left_and_nothing_else(tmp_path):
    killed, left = start_writer(tmp_path / "sam_med3d_turbo.pth")
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert left.is_file()  # a SIGKILL leaves it: nothing in the process can run
    running, in_use = start_writer(tmp_path / "other.pth")
    try:
        foreign_old = tmp_path / ".x.pth~abcdef-12-0123abcd.tmp"  # another host's, untouched for two days
        foreign_new = tmp_path / ".y.pth~abcdef-12-0123abcd.tmp"  # another host's, recent: maybe still written
        for path in (foreign_old, foreign_new):
            path.write_bytes(b"")
        os.utime(foreign_old, (time.time() - 2 * 86400,) * 2)
        not_ours = [tmp_path / ".hidden.tmp", tmp_path / "model.pth.part", tmp_path / ".notes~x.tmp"]
        for path in not_ours:
            path.write_bytes(b"keep")
        files.write_json(tmp_path / "run.json", {})
        assert not left.exists() and not foreign_old.exists()
        assert in_use.is_file() and foreign_new.is_file() and all(p.is_file() for p in not_ours)
    finally:
        running.kill()
        running.wait()


def test_errors_name_the_users_path_not_a_temporary_file(read_only_folder):
    target = read_only_folder / "mask.nii.gz"
    with pytest.raises(SAMMed3DError) as raised, files.atomic_path(target, ".nii.gz"):
        pass
    assert str(raised.value).startswith(f"cannot write {target}: ") and ".tmp" not in str(raised.value)
    with pytest.raises(SAMMed3DError, match=f"cannot write {read_only_folder / 'out'}: "):
        files.check_writable(read_only_folder / "out", folder=True)
    assert list(read_only_folder.iterdir()) == []


def test_check_writable_finds_folders_and_files_given_for_each_other(tmp_path):
    (tmp_path / "a.nrrd").mkdir()
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(SAMMed3DError, match="a.nrrd: it is a folder"):
        files.check_writable(tmp_path / "a.nrrd")
    with pytest.raises(SAMMed3DError, match="file: it is a file, not a folder"):
        files.check_writable(tmp_path / "file", folder=True)
    with pytest.raises(SAMMed3DError, match="is a file, not a folder"):
        files.check_writable(tmp_path / "file" / "results", folder=True)
    files.check_writable(tmp_path / "new" / "deeper", folder=True)  # creatable: fine, and nothing created
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nrrd", "file"]
