"""Shared fixtures: real test volumes from package registries, fetched once and cached."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

PYRADIOMICS = "pyradiomics-bhklab==3.1.4"
MRICRON = "mricron-data"  # Debian's package of MRIcron's templates and atlases
MRICRON_FILES = ("aal.nii.gz", "aal.nii.txt", "ch2.nii.gz")


def _test_data_cache() -> Path:
    return Path(os.environ.get("SAMMED3D_TEST_DATA", Path.home() / ".cache" / "sammed3d-test-data"))


@pytest.fixture(scope="session")
def pyradiomics_data() -> Path:
    """Folder with pyradiomics' real CT (lung*) and MR (brain*) volumes and lesion labels (`*_image.nrrd`,
    `*_label.nrrd`), unpacked from the package's source archive on PyPI."""
    target = _test_data_cache() / "pyradiomics"
    if not (target / "lung1_image.nrrd").exists():
        with tempfile.TemporaryDirectory() as download:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", "pyradiomics-bhklab",
                 PYRADIOMICS, "-d", download],
                check=True,
            )
            (archive,) = Path(download).glob("*.tar.gz")
            target.mkdir(parents=True, exist_ok=True)
            with tarfile.open(archive) as tar:
                for member in tar.getmembers():
                    if "/data/" in member.name and member.name.endswith(".nrrd"):
                        member.name = Path(member.name).name
                        tar.extract(member, target)
    return target


@pytest.fixture()
def read_only_folder(tmp_path) -> Path:
    """An existing folder nobody can create files in: mode 0555, or for root (whom modes do not stop) the
    immutable attribute."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if getattr(os, "geteuid", lambda: 1)() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("running as root on a file system without the immutable attribute: no read-only folder")
    yield folder
    subprocess.run(["chattr", "-i", str(folder)], check=True)


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ONNX export (encoder.onnx, decoder.onnx, with the checkpoint's SHA256) of a tiny random checkpoint. CI's
    torch-free Python 3.9 run makes it beforehand and names it in SAMMED3D_TEST_ONNX_EXPORT."""
    given = os.environ.get("SAMMED3D_TEST_ONNX_EXPORT")
    if given:
        return Path(given)
    pytest.importorskip("torch")
    from SAMMed3DLib.backends.onnx_export import export_checkpoint
    from SAMMed3DLib.testing.random_weights import save_random_checkpoint

    folder = tmp_path_factory.mktemp("tiny_export")
    export_checkpoint(save_random_checkpoint(folder / "tiny.pth", "tiny", seed=5), folder / "tiny")
    return folder / "tiny"


@pytest.fixture(scope="session")
def encoder_server(tiny_export: Path) -> Iterator[str]:
    """The URL of `sammed3d serve` encoding with `tiny_export` on 127.0.0.1; CI's Python 3.9 run, which cannot run
    the server, is given one in SAMMED3D_TEST_SERVER."""
    given = os.environ.get("SAMMED3D_TEST_SERVER")
    if given:
        yield given
        return
    pytest.importorskip("kserve")
    from SAMMed3DLib.testing.servers import ServeProcess

    with ServeProcess(["--backend", "onnx", "--checkpoint", str(tiny_export), "--device", "cpu", "--port", "0"]) \
            as served:
        yield served.url


@pytest.fixture(scope="session")
def mricron_templates() -> Path:
    """Folder with the AAL atlas on the MNI template of Debian's mricron-data (`aal.nii.gz`, its names
    `aal.nii.txt`, the template `ch2.nii.gz`), fetched with `apt-get download` and unpacked with `dpkg -x` once.
    Skips with the reason where apt cannot fetch it (no apt, no Debian archive reachable)."""
    target = _test_data_cache() / "mricron"
    if not all((target / name).exists() for name in MRICRON_FILES):
        missing = [tool for tool in ("apt-get", "dpkg") if shutil.which(tool) is None]
        if missing:
            pytest.skip(f"{' and '.join(missing)} not found: the AAL atlas comes from Debian's {MRICRON} package")
        with tempfile.TemporaryDirectory() as download:
            fetched = subprocess.run(["apt-get", "download", MRICRON], cwd=download, capture_output=True,
                                     encoding="utf-8")
            packages = list(Path(download).glob("*.deb"))
            if fetched.returncode != 0 or not packages:
                reason = (fetched.stderr.strip().splitlines() or ["no .deb file"])[-1]
                pytest.skip(f"apt-get download {MRICRON} failed: {reason}")
            subprocess.run(["dpkg", "-x", str(packages[0]), str(Path(download) / "x")], check=True)
            target.mkdir(parents=True, exist_ok=True)
            for name in MRICRON_FILES:
                shutil.copyfile(Path(download) / "x" / "usr" / "share" / "mricron" / "templates" / name, target / name)
    return target
