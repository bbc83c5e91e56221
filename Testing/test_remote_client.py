"""The remote backend as a workstation has it (numpy, onnxruntime and tritonclient; no torch): a session encoding on a
real `sammed3d serve` equals a local one, eight threads encode at once, and where no v2 server answers the error
is one line. CI also runs this module under Python 3.9 (Slicer 5.6 and 5.8) without torch, against a server started
beforehand (SAMMED3D_TEST_SERVER) on the export SAMMED3D_TEST_ONNX_EXPORT; without those it makes both here."""

from __future__ import annotations

import http.server
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List

import numpy as np
import pytest

from SAMMed3DLib import InteractiveSession, OnnxPredictor, Volume
from SAMMed3DLib.backends.remote_predictor import RemotePredictor, check_connection
from SAMMed3DLib.errors import InsecureToken, NotAV2Server, SAMMed3DError, ServerNotReady, ServerUnreachable
from SAMMed3DLib.testing.scenes import bright_box

pytest.importorskip("tritonclient.http")
# A server of this environment runs this ONNX Runtime: its embeddings are the local ones bit for bit. One started by
# another Python (CI's 3.9 run) may run another ONNX Runtime version: then they agree to float32 rounding.
SAME_RUNTIME = "SAMMED3D_TEST_SERVER" not in os.environ


def assert_same_embedding(found: np.ndarray, expected: np.ndarray) -> None:
    if SAME_RUNTIME:
        np.testing.assert_array_equal(found, expected)
    else:
        np.testing.assert_allclose(found, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def assert_same_mask(found: np.ndarray, expected: np.ndarray) -> None:
    if SAME_RUNTIME:
        np.testing.assert_array_equal(found, expected)
    else:  # a voxel whose logit is within rounding of 0 may flip
        assert found.shape == expected.shape and np.count_nonzero(found != expected) <= 1e-3 * expected.size


@pytest.fixture(scope="module")
def local(tiny_export: Path) -> OnnxPredictor:
    return OnnxPredictor(tiny_export, providers="cpu")


def test_a_session_encoding_on_the_server_equals_a_local_one(encoder_server, tiny_export, local):
    remote = RemotePredictor(encoder_server, tiny_export, device="cpu")
    assert remote.device == "cpu" and encoder_server in remote.label and remote.label.endswith("ONNX Runtime on cpu")
    sessions = [InteractiveSession(predictor, Volume(*bright_box())) for predictor in (local, remote)]
    for point, positive in (([45.0, 40.0, 44.0], True), ([40.0, 42.0, 40.0], False), ([52.0, 50.0, 48.0], True)):
        local_mask, remote_mask = (session.add_click(point, positive).mask.copy() for session in sessions)
        assert_same_mask(remote_mask, local_mask)
    assert local_mask.any() and remote.last_round_trip_s > 0
    image = np.random.default_rng(1).normal(size=(1, 1, 128, 128, 128)).astype(np.float32)
    assert_same_embedding(remote.encode(image), local.encode(image))


def test_a_run_through_the_server_records_the_decoders_checkpoint(encoder_server, tiny_export, local):
    """run.json's checkpoint record (provenance) of the remote backend: the export's checkpoint SHA256, as for the
    local ONNX backend, not None."""
    from SAMMed3DLib import provenance

    remote = RemotePredictor(encoder_server, tiny_export, device="cpu")
    record = provenance.checkpoint(tiny_export, "tiny", remote)
    assert record["sha256"] == provenance.checkpoint(tiny_export, "tiny", local)["sha256"]
    assert record["sha256"] is not None and len(record["sha256"]) == 64


def test_eight_clients_at_once_each_get_their_own_embeddings(encoder_server, tiny_export, local):
    """One predictor shared by 8 threads (each gets its own connection, as tritonclient needs), 5 encodes each, of
    patches that differ per thread and call: every answer is the local encoder's for that patch."""
    remote = RemotePredictor(encoder_server, tiny_export, device="cpu")
    patches = np.random.default_rng(2).random((8, 5, 1, 1, 128, 128, 128), dtype=np.float32)

    def client(index: int) -> List[np.ndarray]:
        try:
            return [remote.encode(patch) for patch in patches[index]]
        finally:
            remote.disconnect()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(client, range(8)))
    for index in range(8):
        for call in range(5):
            assert_same_embedding(answers[index][call], local.encode(patches[index, call]))


def test_fp16_patches_give_nearly_the_same_embedding(encoder_server, tiny_export, local):
    remote = RemotePredictor(encoder_server, tiny_export, dtype="fp16", device="cpu")
    assert remote.model == "sammed3d_encoder_fp16"
    image = np.random.default_rng(3).normal(size=(1, 1, 128, 128, 128)).astype(np.float32)
    expected = local.encode(image)
    found = remote.encode(image)
    assert found.dtype == np.float32 and 0 < np.abs(found - expected).max() <= 1e-2 * np.abs(expected).max()


def test_the_connection_test_reports_server_model_checkpoint_and_round_trip(encoder_server, tiny_export, local):
    info = check_connection(encoder_server)
    assert info.server.startswith("kserve ") and info.model == "sammed3d_encoder" and info.device == "cpu"
    assert info.checkpoint_sha256 == local.metadata["source_checkpoint_sha256"]
    assert info.checkpoint == local.metadata["source_checkpoint"] and 0 < info.round_trip_s < 60
    described = f"{info.server} at {encoder_server}, model sammed3d_encoder on cpu, checkpoint {info.checkpoint} ("
    assert info.describe().startswith(described)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_no_server_listening_is_one_line_after_one_retry():
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(ServerUnreachable) as raised:
        check_connection(url)
    assert str(raised.value) == f"cannot reach the server at {url} (connection refused)"


def test_a_dropped_connection_is_retried_once_then_reported():
    """A listener that accepts and hangs up at once (a server going down): two attempts 0.5 s apart, one error.
    (Within an attempt the HTTP client itself may reconnect at once, as it does for a stale pooled connection.)"""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted = []

    def hang_up() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:  # closed: the test is over
                return
            accepted.append(time.monotonic())
            connection.close()

    threading.Thread(target=hang_up, daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        with pytest.raises(ServerUnreachable, match=f"^cannot reach the server at {url} "):
            check_connection(url)
    finally:
        listener.close()
    gaps = [later - earlier for earlier, later in zip(accepted, accepted[1:])]
    assert len([gap for gap in gaps if gap >= 0.4]) == 1 and max(gaps) >= 0.5  # two bursts: one retry, backed off


def test_a_server_that_never_answers_times_out():
    listener = socket.socket()  # connections wait in its backlog: accepted by the system, never answered
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        started = time.monotonic()
        with pytest.raises(ServerUnreachable, match=r"\(no answer within 1 s\)$"):
            check_connection(url, timeout=1)
        assert time.monotonic() - started < 10
    finally:
        listener.close()


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "ftp://127.0.0.1:8000", "http://127.0.0.1:port", "http://:8000",
                                 "http://127.0.0.1:8000/?model=x"])
def test_a_malformed_url_is_refused_before_connecting(url):
    with pytest.raises(SAMMed3DError, match="server URL|valid port"):
        check_connection(url)


def test_a_token_is_never_sent_over_plain_http_to_another_machine():
    with pytest.raises(InsecureToken, match=r"not to http://workstation.invalid:8000$"):
        check_connection("http://workstation.invalid:8000", token="secret")  # refused before any connection


class _Recorder(http.server.BaseHTTPRequestHandler):
    """A web server that records what it was sent. `answer`: (status, headers, body) for every path, or a dict of
    them by path (404 for the others)."""

    answer = (404, {"Content-Type": "text/html"}, b"<html>Not here</html>")
    seen: List[dict] = []

    def do_GET(self) -> None:  # noqa: N802 (the http.server name)
        type(self).seen.append({"path": self.path, "authorization": self.headers.get("Authorization")})
        answers = self.answer if isinstance(self.answer, dict) else {self.path: self.answer}
        status, headers, body = answers.get(self.path, (404, {}, b""))
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _web_server(answer) -> http.server.ThreadingHTTPServer:
    handler = type("Handler", (_Recorder,), {"answer": answer, "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    return server


@pytest.mark.parametrize(("answer", "reason"), [
    ((404, {"Content-Type": "text/html"}, b"<html>Not here</html>"), "GET /v2 answered HTTP 404"),
    ((200, {"Content-Type": "text/html"}, b"<html>Welcome</html>"), "its answer to GET /v2 is not JSON"),
    ((200, {"Content-Type": "application/json"}, b'{"status": "ok"}'), "its answer to GET /v2 is not server metadata"),
])
def test_a_web_server_that_is_not_v2_is_named_as_such(answer, reason):
    web = _web_server(answer)
    try:
        url = f"http://127.0.0.1:{web.server_address[1]}"
        with pytest.raises(NotAV2Server) as raised:
            check_connection(url)
        assert str(raised.value) == f"{url} is not an Open Inference Protocol (v2) server: {reason}"
    finally:
        web.shutdown()


def test_the_token_goes_only_to_its_url_not_where_a_redirect_points():
    elsewhere = _web_server((200, {"Content-Type": "application/json"}, b"{}"))
    redirect = (307, {"Location": f"http://127.0.0.1:{elsewhere.server_address[1]}/v2"}, b"")
    first = _web_server(redirect)
    try:
        with pytest.raises(NotAV2Server, match="answered HTTP 307"):
            check_connection(f"http://127.0.0.1:{first.server_address[1]}", token="secret")
        assert first.RequestHandlerClass.seen == [{"path": "/v2", "authorization": "Bearer secret"}]
        assert elsewhere.RequestHandlerClass.seen == []
    finally:
        first.shutdown()
        elsewhere.shutdown()


def test_a_v2_server_that_is_not_ready_says_so():
    metadata = b'{"name": "triton", "version": "2.50.0", "extensions": []}'
    starting = _web_server({"/v2": (200, {"Content-Type": "application/json"}, metadata),
                            "/v2/health/ready": (503, {}, b"")})
    try:
        url = f"http://127.0.0.1:{starting.server_address[1]}"
        with pytest.raises(ServerNotReady, match=f"^the server at {url} is not ready yet"):
            check_connection(url)
    finally:
        starting.shutdown()
