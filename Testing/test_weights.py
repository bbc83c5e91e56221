"""The weights cache against a real HTTP server on 127.0.0.1: resume after a dropped transfer, refusal of a wrong
file, no second download, offline message, import and `--checkpoint NAME` resolution."""

from __future__ import annotations

import hashlib
import http.server
import re
import socket
import threading
from pathlib import Path

import pytest

from SAMMed3DLib import weights
from SAMMed3DLib.cli import main
from SAMMed3DLib.errors import SAMMed3DError

PAYLOAD = bytes(range(256)) * 4096 + b"end"  # 1 MiB + 3 bytes
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Server:
    """Serves one file with Range support; `drop_first` cuts the first transfer after `drop_at` bytes."""

    def __init__(self) -> None:
        self.body = PAYLOAD
        self.drop_first = False
        self.drop_at = 300_000
        self.requests: list[str | None] = []  # the Range header of each GET
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                server.requests.append(self.headers.get("Range"))
                start = 0
                if self.headers.get("Range"):
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    if start >= len(server.body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(server.body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(server.body) - 1}/{len(server.body)}")
                else:
                    self.send_response(200)
                body = server.body[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.drop_first and len(server.requests) == 1:
                    self.wfile.write(body[: server.drop_at])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/files/model.pth"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture()
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("SAMMED3D_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def cache_files(home: Path) -> list[str]:
    folder = home / "weights"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_dropped_transfer_resumes_with_a_range_request(server, home):
    server.drop_first = True
    path = weights.download(server.url, sha256=PAYLOAD_SHA, retry_delay=0)
    assert path == home / "weights" / "model.pth"
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [None, f"bytes={server.drop_at}-"]
    assert cache_files(home) == ["model.pth"]


def test_interrupted_download_resumes_in_a_later_call(server, home):
    server.drop_first = True
    with pytest.raises(SAMMed3DError, match="interrupted"):
        weights.download(server.url, sha256=PAYLOAD_SHA, retries=1)
    assert cache_files(home) == ["model.pth.part"]  # nothing visible under the final name
    assert (home / "weights" / "model.pth.part").stat().st_size == server.drop_at
    path = weights.download(server.url, sha256=PAYLOAD_SHA)
    assert path.read_bytes() == PAYLOAD
    assert server.requests[-1] == f"bytes={server.drop_at}-"
    assert cache_files(home) == ["model.pth"]


def test_wrong_file_is_refused_and_nothing_is_left(server, home):
    server.body = PAYLOAD[:-3] + b"bad"
    with pytest.raises(SAMMed3DError, match=f"SHA256 mismatch.*expected {PAYLOAD_SHA}"):
        weights.download(server.url, sha256=PAYLOAD_SHA)
    assert cache_files(home) == []
    server.body = PAYLOAD  # the right file is then accepted
    assert weights.download(server.url, sha256=PAYLOAD_SHA).read_bytes() == PAYLOAD


def test_verified_file_is_never_downloaded_twice(server, home):
    weights.download(server.url, sha256=PAYLOAD_SHA)
    weights.download(server.url, sha256=PAYLOAD_SHA)
    assert server.requests == [None]


def test_a_different_cached_file_under_the_same_name_is_not_passed_off_as_verified(server, home):
    (home / "weights").mkdir(parents=True)
    (home / "weights" / "model.pth").write_bytes(b"another checkpoint")
    with pytest.raises(SAMMed3DError, match=f"already holds a different model.pth.*not {PAYLOAD_SHA}"):
        weights.download(server.url, sha256=PAYLOAD_SHA)
    assert (home / "weights" / "model.pth").read_bytes() == b"another checkpoint"
    assert server.requests == []


def test_imported_safetensors_keep_their_format_and_load_by_name(tmp_path, home, capsys):
    pytest.importorskip("torch")
    import torch
    from safetensors.torch import save_file

    from SAMMed3DLib.testing.random_weights import random_model

    state = random_model("tiny", seed=3).state_dict()
    source = tmp_path / "mine.safetensors"
    save_file({key: value.contiguous() for key, value in state.items()}, str(source))
    stored = weights.import_file(source, name="mine")
    assert stored == home / "weights" / "mine.safetensors"
    assert weights.resolve("mine") == stored
    from SAMMed3DLib.model import load_sam_med3d

    assert torch.equal(load_sam_med3d(stored).state_dict()["mask_decoder.iou_token.weight"],
                       state["mask_decoder.iou_token.weight"])
    assert main(["weights", "list"]) == 0
    assert "mine.safetensors" in capsys.readouterr().out


def test_registry_name_downloads_and_resolves(server, home, monkeypatch):
    entry = weights.Checkpoint("turbo", "sam_med3d_turbo.pth", server.url, server.url, len(PAYLOAD), PAYLOAD_SHA, "")
    monkeypatch.setattr(weights, "REGISTRY", (entry,))
    path = weights.resolve("turbo")
    assert path == home / "weights" / "sam_med3d_turbo.pth" and path.read_bytes() == PAYLOAD
    assert weights.resolve("turbo") == path
    assert len(server.requests) == 1


def test_unknown_hash_is_refused_with_the_computed_hash_and_kept_for_a_rerun(server, home):
    with pytest.raises(SAMMed3DError, match=f"SHA256 is {PAYLOAD_SHA}"):
        weights.download(server.url)
    assert cache_files(home) == ["model.pth.part"]
    path = weights.download(server.url, sha256=PAYLOAD_SHA)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [None, f"bytes={len(PAYLOAD)}-"]  # answered 416: nothing transferred again


def test_offline_machine_gets_one_line_pointing_at_import(home, capsys):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/sam_med3d_turbo.pth"
    assert main(["weights", "download", url]) == 2  # a mirror URL of turbo: its published hash applies
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sammed3d weights import" in err[0] and "Traceback" not in err[0]
    assert cache_files(home) == []


def test_google_drive_only_entry_points_at_its_page(home):
    with pytest.raises(SAMMed3DError, match="no direct download; it is offered at https://drive.google.com"):
        weights.download("base")


def test_import_verify_and_resolve(tmp_path, home, monkeypatch, capsys):
    pytest.importorskip("torch")
    from SAMMed3DLib.testing.random_weights import save_random_checkpoint

    source = tmp_path / "finetuned.pth"
    source.write_bytes(PAYLOAD)
    assert main(["weights", "verify", str(source)]) == 0
    assert capsys.readouterr().out.startswith(PAYLOAD_SHA)
    assert main(["weights", "verify", str(source), "--sha256", "0" * 64]) == 2
    assert "SHA256 mismatch" in capsys.readouterr().err

    # A file without a published hash must load as SAM-Med3D before it enters the cache.
    assert main(["weights", "import", str(source), "--name", "liver"]) == 2
    assert re.search(r"finetuned.pth .*not a (PyTorch )?checkpoint", capsys.readouterr().err)
    assert cache_files(home) == []
    checkpoint = save_random_checkpoint(tmp_path / "finetuned_liver.pth", variant="tiny")
    assert main(["weights", "import", str(checkpoint), "--name", "liver"]) == 0
    assert weights.resolve("liver") == home / "weights" / "liver.pth"
    assert (home / "weights" / "liver.pth").read_bytes() == checkpoint.read_bytes()

    # A file that claims to be turbo but is not: refused, cache unchanged.
    assert main(["weights", "import", str(source), "--name", "turbo"]) == 2
    err = capsys.readouterr().err
    assert "(the published 'turbo' checkpoint); if it is a different checkpoint, import it under another --name" in err
    fake = tmp_path / "sam_med3d_turbo.pth"
    fake.write_bytes(PAYLOAD)
    assert main(["weights", "import", str(fake)]) == 2
    assert cache_files(home) == ["liver.pth"]

    # A registered checkpoint is recognised by its hash and stored under its published file name.
    entry = weights.Checkpoint("turbo", "sam_med3d_turbo.pth", None, "page", None, PAYLOAD_SHA, "")
    monkeypatch.setattr(weights, "REGISTRY", (entry,))
    assert weights.import_file(source) == home / "weights" / "sam_med3d_turbo.pth"
    assert weights.resolve("turbo") == home / "weights" / "sam_med3d_turbo.pth"


def test_resolve_errors_name_the_problem(tmp_path, home):
    with pytest.raises(SAMMed3DError, match="no such file, and not a checkpoint name"):
        weights.resolve(str(tmp_path / "missing.pth"))
    with pytest.raises(SAMMed3DError, match="no such file, and not a checkpoint name.*turbo"):
        weights.resolve("turbbo")
    with pytest.raises(SAMMed3DError, match="a folder, not a checkpoint file"):
        weights.resolve(str(tmp_path))
    with pytest.raises(SAMMed3DError, match="not a SHA256"):
        weights.download("turbo", sha256="abc")


def test_list_shows_the_registry_with_turbo_first(home, capsys):
    assert main(["weights", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"cache: {home / 'weights'}"
    assert lines[1].split()[:2] == ["turbo", "sam_med3d_turbo.pth"]
    assert "899a46d04d3b70f723282ceb489149373558bf0aaba389a346f5ab57da5cdd3c" in lines[1]
    assert "not published" in "\n".join(lines[3:])


def test_a_mirror_of_a_published_checkpoint_is_checked_against_the_published_hash(server, home, monkeypatch):
    entry = weights.Checkpoint("turbo", "model.pth", "https://example.invalid/model.pth", "", None, PAYLOAD_SHA, "")
    monkeypatch.setattr(weights, "REGISTRY", (entry,))
    with pytest.raises(SAMMed3DError, match="published 'turbo' checkpoint"):
        weights.download(server.url, sha256="1" * 64)
    assert weights.download(server.url).read_bytes() == PAYLOAD  # no --sha256 needed
    assert weights.resolve("turbo") == home / "weights" / "model.pth"


def test_a_cached_file_of_a_url_without_published_hash_is_hashed_and_reported(server, home, capsys):
    """`weights download URL` finds a file of the same name in the cache: not returned as if verified."""
    (home / "weights").mkdir(parents=True)
    unrelated = b"an unrelated checkpoint of the same name"
    (home / "weights" / "model.pth").write_bytes(unrelated)
    unrelated_sha = hashlib.sha256(unrelated).hexdigest()
    assert main(["weights", "download", server.url]) == 2
    err = capsys.readouterr().err
    assert f"the cached file {home / 'weights' / 'model.pth'} has SHA256 {unrelated_sha}" in err
    assert f"run again with --sha256 {unrelated_sha}" in err and server.requests == []
    assert weights.download(server.url, sha256=unrelated_sha).read_bytes() == unrelated  # trusted: no transfer
    assert server.requests == []


def test_import_never_replaces_a_different_file_under_a_taken_name(tmp_path, home, capsys):
    pytest.importorskip("torch")
    from SAMMed3DLib.testing.random_weights import save_random_checkpoint

    first = save_random_checkpoint(tmp_path / "first.pth", seed=1)
    second = save_random_checkpoint(tmp_path / "second.pth", seed=2)
    assert main(["weights", "import", str(first), "--name", "liver"]) == 0
    assert "import" in capsys.readouterr().err  # the progress bar of hashing and copying
    stored = home / "weights" / "liver.pth"
    assert (stored.stat().st_mode & 0o777) == 0o644  # the umask's mode (022 here), not mkstemp's 0600
    assert main(["weights", "import", str(second), "--name", "liver"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds a different liver.pth" in err and "--replace" in err
    assert stored.read_bytes() == first.read_bytes()
    assert main(["weights", "import", str(first), "--name", "liver"]) == 0  # the same file again: nothing to do
    assert main(["weights", "import", str(second), "--name", "liver", "--replace"]) == 0
    assert stored.read_bytes() == second.read_bytes()
    assert cache_files(home) == ["liver.pth"]


def test_verify_and_remove_a_cached_name(tmp_path, home, monkeypatch, capsys):
    entry = weights.Checkpoint("turbo", "sam_med3d_turbo.pth", None, "page", None, PAYLOAD_SHA, "")
    monkeypatch.setattr(weights, "REGISTRY", (entry,))
    (home / "weights").mkdir(parents=True)
    (home / "weights" / "sam_med3d_turbo.pth").write_bytes(PAYLOAD)
    assert main(["weights", "verify", "turbo"]) == 0
    assert capsys.readouterr().out.startswith(f"{PAYLOAD_SHA}  {home / 'weights' / 'sam_med3d_turbo.pth'}  "
                                              "(matches the published 'turbo' checkpoint)")
    (home / "weights" / "sam_med3d_turbo.pth").write_bytes(PAYLOAD[:-1])  # damaged in the cache
    assert main(["weights", "verify", "turbo"]) == 2
    assert "SHA256 mismatch" in capsys.readouterr().err
    (home / "weights" / "sam_med3d_turbo.pth.part").write_bytes(b"half")
    assert main(["weights", "remove", "turbo"]) == 0
    assert capsys.readouterr().out.count("removed ") == 2 and cache_files(home) == []
    assert main(["weights", "remove", "turbo"]) == 2
    assert "holds no checkpoint 'turbo'" in capsys.readouterr().err


def test_a_read_only_home_is_named_before_any_transfer(server, monkeypatch, read_only_folder, capsys):
    monkeypatch.setenv("SAMMED3D_HOME", str(read_only_folder))
    assert main(["weights", "download", server.url, "--sha256", PAYLOAD_SHA]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"SAMMED3D_HOME is {read_only_folder}, and its weights cache {read_only_folder / 'weights'} cannot be " \
           "written" in err and "set SAMMED3D_HOME to a writable folder" in err
    assert server.requests == []


def test_an_old_format_checkpoint_brings_no_note_from_torch(tmp_path, home, capsys):
    """torch's legacy (non-zip) format with pickle protocol 4: torch's safe loader cannot read it and notes the
    protocol to its developers on stderr; we say what the file is, once."""
    torch = pytest.importorskip("torch")
    import warnings

    from SAMMed3DLib.testing.random_weights import random_model

    path = tmp_path / "old_format.pth"
    torch.save({"model_state_dict": random_model("tiny").state_dict()}, path, _use_new_zipfile_serialization=False,
               pickle_protocol=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["weights", "import", str(path), "--name", "old"]) == 2
    assert [str(w.message) for w in caught] == []
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "in torch's old (non-zip) format with a newer pickle protocol" in err and "torch.save" in err
    assert cache_files(home) == []
