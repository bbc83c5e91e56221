"""`sammed3d serve` for real on 127.0.0.1 (subprocesses on free ports): remote masks equal local ones on a real CT
through the command line, a server killed mid-session and restarted (with another checkpoint, then the right one),
token and TLS, the request checks, the KServe features the server relies on, and `sammed3d export-triton`'s
repository checked with Triton's own model-configuration protobuf against its ONNX files."""

from __future__ import annotations

import asyncio
import datetime
import http.client
import inspect
import ipaddress
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SAMMed3DLib import InteractiveSession, OnnxPredictor, Volume
from SAMMed3DLib.backends.remote_predictor import RemotePredictor, ServerConnection, check_connection
from SAMMed3DLib.cli import main
from SAMMed3DLib.commands.messages import terminal_message
from SAMMed3DLib.errors import (
    AccessDenied,
    CheckpointMismatch,
    SAMMed3DError,
    ServerError,
    ServerUnreachable,
    TLSVerificationFailed,
)
from SAMMed3DLib.testing.random_weights import save_random_checkpoint
from SAMMed3DLib.testing.scenes import bright_box
from SAMMed3DLib.testing.servers import ServeProcess

pytest.importorskip("kserve")
LESION = ("218", "359", "33")  # lung1's lesion, I J K
FAR = ("100", "150", "40")  # > 96 mm away: a second region, a second encode


@pytest.fixture(scope="module")
def other_export(tmp_path_factory) -> Path:
    """The export of another checkpoint (same network size, other weights)."""
    from SAMMed3DLib.backends.onnx_export import export_checkpoint

    folder = tmp_path_factory.mktemp("other")
    export_checkpoint(save_random_checkpoint(folder / "other.pth", "tiny", seed=6), folder / "export")
    return folder / "export"


def _serve_args(export: Path, port: int = 0, *extra: str) -> list:
    return ["--backend", "onnx", "--checkpoint", str(export), "--device", "cpu", "--port", str(port), *extra]


def _predict(image: Path, export: Path, output: Path, *backend: str) -> int:
    return main(["predict", str(image), "--checkpoint", str(export), "--device", "cpu", *backend, "--ijk",
                 "--point", *LESION, "--point", *FAR, "--output", str(output)])


def test_remote_masks_equal_local_ones_on_a_real_ct(pyradiomics_data, tiny_export, encoder_server, tmp_path, capsys):
    image = pyradiomics_data / "lung1_image.nrrd"
    assert _predict(image, tiny_export, tmp_path / "local.nrrd", "--backend", "onnx") == 0
    assert _predict(image, tiny_export, tmp_path / "remote.nrrd", "--backend", "remote", "--server",
                    encoder_server) == 0
    local, remote = (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / f"{n}.nrrd"))) for n in ("local", "remote"))
    assert 0 < local.sum() < local.size
    np.testing.assert_array_equal(remote, local)


def test_evaluate_through_the_server_scores_as_locally(tiny_export, encoder_server, tmp_path):
    voxels, ijk_to_ras = bright_box()
    for folder, array in (("images", voxels), ("labels", (voxels > 300).astype(np.uint8))):
        (tmp_path / folder).mkdir()
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(np.diag(ijk_to_ras)[:3].tolist())
        sitk.WriteImage(image, str(tmp_path / folder / "box.nii.gz"))
    scores = {}
    for name, backend in (("local", ["--backend", "onnx"]), ("remote", ["--backend", "remote", "--server",
                                                                         encoder_server])):
        assert main(["evaluate", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
                     "--checkpoint", str(tiny_export), "--device", "cpu", "--clicks", "2", *backend,
                     "--output", str(tmp_path / name)]) == 0
        scores[name] = [line.split(",")[4] for line in (tmp_path / name / "metrics.csv").read_text().splitlines()]
    assert scores["remote"] == scores["local"] and len(scores["local"]) == 3


def test_a_killed_server_fails_one_click_cleanly_and_a_restarted_one_works(pyradiomics_data, tiny_export,
                                                                          other_export):
    volume = Volume.read(pyradiomics_data / "lung1_image.nrrd")
    lesion, far = (volume.ijk_to_ras_points(np.array([float(v) for v in p]))[0] for p in (LESION, FAR))
    # One region per click (no growing into neighbours): the far click needs an encode.
    local = InteractiveSession(OnnxPredictor(tiny_export, providers="cpu"), volume, max_rois=1)
    served = ServeProcess(_serve_args(tiny_export)).start()
    try:
        session = InteractiveSession(RemotePredictor(served.url, tiny_export, device="cpu"), volume, max_rois=1)
        np.testing.assert_array_equal(session.add_click(lesion).mask, local.add_click(lesion).mask)
        before, clicks, frames = session.mask.copy(), session.clicks, session.frames
        served.kill()
        with pytest.raises(ServerUnreachable) as raised:
            session.add_click(far)  # a new region: an encode
        assert str(raised.value).startswith(f"cannot reach the server at {served.url} (")
        assert "\n" not in terminal_message(raised.value)
        np.testing.assert_array_equal(session.mask, before)
        assert (session.clicks, session.frames) == (clicks, frames)

        served.start(_serve_args(other_export, served.port))  # the same address, another checkpoint
        with pytest.raises(CheckpointMismatch, match="encodes with checkpoint SHA256"):
            session.add_click(far)
        np.testing.assert_array_equal(session.mask, before)
        served.terminate()

        served.start(_serve_args(tiny_export, served.port))
        np.testing.assert_array_equal(session.add_click(far).mask, local.add_click(far).mask)
        assert len(session.frames) == 2
    finally:
        served.terminate()


def test_a_server_with_another_checkpoint_is_refused_in_one_line(encoder_server, other_export, tmp_path, capsys):
    with pytest.raises(CheckpointMismatch) as raised:
        RemotePredictor(encoder_server, other_export)
    assert raised.value.served != raised.value.local and raised.value.local in str(raised.value)
    volume = tmp_path / "box.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(bright_box()[0]), str(volume))
    assert main(["predict", str(volume), "--checkpoint", str(other_export), "--backend", "remote", "--server",
                 encoder_server, "--ijk", "--point", "40", "40", "20", "--output", str(tmp_path / "m.nrrd")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("sammed3d predict: error: the server at ") and "sammed3d export-onnx" in line
    assert not (tmp_path / "m.nrrd").exists()


@pytest.mark.parametrize(("arguments", "expected"), [
    (["--backend", "remote"], "--backend remote needs --server URL"),
    (["--server", "http://127.0.0.1:9"], "--server is for --backend remote"),
    (["--backend", "remote", "--server", "http://127.0.0.1:9", "--token-file", "/no/such/token"],
     "--token-file /no/such/token: No such file or directory"),
])
def test_remote_options_are_checked_in_one_line(tiny_export, tmp_path, capsys, arguments, expected):
    volume = tmp_path / "box.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(bright_box()[0]), str(volume))
    assert main(["predict", str(volume), "--checkpoint", str(tiny_export), *arguments, "--ijk",
                 "--point", "40", "40", "20", "--output", str(tmp_path / "m.nrrd")]) == 2
    assert capsys.readouterr().err == f"sammed3d predict: error: {expected}\n"


def _self_signed_certificate(folder: Path) -> tuple:
    """A certificate for 127.0.0.1 signed by itself, and its key (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SAMMed3D test server")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert, key_file = folder / "server.crt", folder / "server.key"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert, key_file


def test_https_with_a_token(tiny_export, tmp_path):
    cert, key = _self_signed_certificate(tmp_path)
    (tmp_path / "token").write_text("s3cret-token\n", encoding="utf-8")
    args = _serve_args(tiny_export, 0, "--token-file", str(tmp_path / "token"), "--tls-cert", str(cert),
                       "--tls-key", str(key))
    with ServeProcess(args) as served:
        url = served.url
        assert url.startswith("https://127.0.0.1:")
        with pytest.raises(TLSVerificationFailed, match=f"the certificate of {url} could not be verified"):
            check_connection(url, "s3cret-token")  # not signed by an authority this computer trusts
        with pytest.raises(AccessDenied) as without:
            check_connection(url, ca_file=cert)
        assert (without.value.status, without.value.token_sent) == (401, False)
        with pytest.raises(AccessDenied, match=r"HTTP 401, asked with a token it did not accept"):
            check_connection(url, "wrong", ca_file=cert)
        remote = RemotePredictor(url, tiny_export, "s3cret-token", ca_file=cert, device="cpu")
        image = np.random.default_rng(4).random((1, 1, 128, 128, 128), dtype=np.float32)
        np.testing.assert_array_equal(remote.encode(image), OnnxPredictor(tiny_export, providers="cpu").encode(image))

        trusted = ssl.create_default_context(cafile=str(cert))
        with urllib.request.urlopen(f"{url}/v2/health/ready", context=trusted) as answer:  # probes need no token
            assert answer.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}/v2", context=trusted)
        assert refused.value.code == 401 and refused.value.headers["WWW-Authenticate"] == "Bearer"

        volume = tmp_path / "box.nrrd"
        sitk.WriteImage(sitk.GetImageFromArray(bright_box()[0]), str(volume))
        command = [sys.executable, "-m", "SAMMed3DLib.cli", "predict", str(volume), "--checkpoint", str(tiny_export),
                   "--backend", "remote", "--server", url, "--token-file", str(tmp_path / "token"), "--ijk",
                   "--point", "40", "40", "20", "--output", str(tmp_path / "m.nrrd")]
        environment = {**os.environ, "SSL_CERT_FILE": str(cert)}  # what the terminal's TLS message advises
        done = subprocess.run(command, capture_output=True, encoding="utf-8", env=environment)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"wrote {tmp_path / 'm.nrrd'}")


def test_the_server_refuses_bad_and_oversized_requests(encoder_server):
    connection = ServerConnection(encoder_server)
    with pytest.raises(ServerError, match=r"failed /v2/models/sammed3d_encoder/infer \(HTTP 400: input 'image' must "
                                          r"have shape \[N, 1, 128, 128, 128\]"):
        connection.encode("sammed3d_encoder", np.zeros((1, 1, 64, 64, 64), np.float32))
    host, port = encoder_server.split("//")[1].split(":")
    client = http.client.HTTPConnection(host, int(port), timeout=10)
    client.putrequest("POST", "/v2/models/sammed3d_encoder/infer")
    client.putheader("Content-Length", str(2**31))
    client.endheaders()  # and no body: refused before it is read
    answer = client.getresponse()
    assert answer.status == 413 and b"at most" in answer.read()
    client.close()
    client = http.client.HTTPConnection(host, int(port), timeout=10)
    client.request("POST", "/v2/repository/models/sammed3d_encoder/unload")
    assert client.getresponse().status == 403  # nobody unloads the model
    client.close()


def test_health_answers_while_an_encode_runs(tiny_export):
    """The encode runs on the service's worker thread: the event loop (health, metadata) keeps going."""
    from SAMMed3DLib.serving import kserve_server
    from SAMMed3DLib.serving.encoder import EncoderService, ServedCheckpoint

    release = threading.Event()

    class Blocking(OnnxPredictor):
        def encode(self, image):
            if image.any():  # the warm-up encode (a blank patch) passes
                release.wait(30)
            return super().encode(image)

    service = EncoderService(Blocking(tiny_export, providers="cpu"), ServedCheckpoint("a" * 64, "tiny.pth"))
    model = kserve_server._EncoderModel(service)
    image = np.ones((1, 1, 128, 128, 128), np.float32)
    request = kserve_server.InferRequest("sammed3d_encoder", [kserve_server.InferInput("image", list(image.shape),
                                                                                       "FP32", image.ravel())])

    async def scenario():
        encoding = asyncio.ensure_future(model.predict(request))
        for _ in range(5):
            assert await model.healthy() and not encoding.done()
            await asyncio.sleep(0.01)
        release.set()
        return await encoding

    response = asyncio.run(scenario())
    np.testing.assert_array_equal(response.outputs[0].as_numpy(), service.predictor.encode(image))
    assert response.parameters["source_checkpoint_sha256"] == "a" * 64
    service.shutdown()


def test_the_encoder_service_serves_a_checkpoint_on_torch_and_refuses_an_export_without_its_sha256(tiny_export,
                                                                                                     tmp_path):
    import onnx
    import torch

    from SAMMed3DLib.model import load_sam_med3d
    from SAMMed3DLib.serving.encoder import open_service
    from SAMMed3DLib.weights import sha256_of

    checkpoint = save_random_checkpoint(tmp_path / "tiny.pth", "tiny", seed=9)
    service = open_service("torch", checkpoint, "cpu")
    try:
        assert (service.checkpoint.sha256, service.checkpoint.name) == (sha256_of(checkpoint), "tiny.pth")
        assert service.embedding_shape == (48, 8, 8, 8) and service.parameters()["device"] == "cpu"
        patches = np.random.default_rng(7).random((2, 1, 128, 128, 128), dtype=np.float32)
        found = service.submit(patches.astype(np.float16)).result()  # FP16 in, FP32 out, two patches
        with torch.inference_mode():
            expected = load_sam_med3d(checkpoint).encode(torch.from_numpy(patches.astype(np.float16)
                                                                          .astype(np.float32))).numpy()
        assert found.dtype == np.float32 and np.abs(found - expected).max() <= 1e-5 * np.abs(expected).max()
    finally:
        service.shutdown()

    stripped = tmp_path / "stripped"
    stripped.mkdir()
    for name in ("encoder.onnx", "decoder.onnx"):
        model = onnx.load(str(tiny_export / name))
        del model.metadata_props[:]
        onnx.save(model, str(stripped / name))
    with pytest.raises(SAMMed3DError, match="does not record the SHA256 of the checkpoint it was exported from"):
        open_service("onnx", stripped, "cpu")


def test_kserve_offers_what_the_server_relies_on():
    """KServe 0.21's classes and arguments that kserve_server.py's four workarounds use; an upgrade that changes
    them fails here (see that module's docstring)."""
    import fastapi
    import tritonclient.http as triton_http

    from SAMMed3DLib.serving import kserve_server as ks

    assert list(inspect.signature(ks.DataPlane.decode_inference_request).parameters) == [
        "self", "body", "headers", "model_name"]
    assert "raw_inputs" in inspect.signature(ks.InferRequest.__init__).parameters
    assert "sockets" in inspect.signature(ks.RESTServer.run).parameters
    assert ks.FASTAPI_APP_IMPORT_STRING == "kserve.model_server:app" and isinstance(ks.kserve.model_server.app,
                                                                                    fastapi.FastAPI)
    image = np.random.default_rng(5).random((1, 1, 128, 128, 128), dtype=np.float32)
    tensor = triton_http.InferInput("image", list(image.shape), "FP32")
    tensor.set_data_from_numpy(image, binary_data=True)
    body, json_size = triton_http.InferenceServerClient.generate_request_body(
        [tensor], outputs=[triton_http.InferRequestedOutput("embedding", binary_data=True)])
    headers = {ks.INFERENCE_CONTENT_LENGTH_HEADER: str(json_size)}
    ours = ks._BinaryDataPlane(ks.ModelRepository()).decode_inference_request(body, headers, "m")
    stock = ks.DataPlane(ks.ModelRepository()).decode_inference_request(body, headers, "m")
    fast = ours.inputs[0].as_numpy()
    np.testing.assert_array_equal(fast, image[0:1])
    np.testing.assert_array_equal(stock.inputs[0].as_numpy(), fast)
    assert np.shares_memory(fast, np.frombuffer(body, np.uint8))  # a view of the request, no copy
    assert ours.request_outputs[0].name == "embedding" and ours.use_binary_outputs == stock.use_binary_outputs


def _taken_port():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


@pytest.mark.parametrize("case", ["port taken", "token in clear", "half of TLS"])
def test_serve_refuses_what_cannot_work_in_one_line(tiny_export, tmp_path, capsys, case):
    (tmp_path / "token").write_text("t\n", encoding="utf-8")
    taken = _taken_port()
    port = taken.getsockname()[1]
    arguments, expected = {
        "port taken": (["--port", str(port)], f"cannot listen on 127.0.0.1:{port} (Address already in use)"),
        "token in clear": (["--host", "0.0.0.0", "--token-file", str(tmp_path / "token")],
                           "--token-file on --host 0.0.0.0 without https would send the token readably"),
        "half of TLS": (["--tls-cert", str(tmp_path / "token")], "https needs both --tls-cert and --tls-key"),
    }[case]
    try:
        assert main(["serve", "--backend", "onnx", "--checkpoint", str(tiny_export), *arguments]) == 2
    finally:
        taken.close()
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"sammed3d serve: error: {expected}")


def test_export_triton_writes_a_repository_that_triton_s_protobuf_and_the_onnx_files_agree_on(tmp_path, capsys):
    import onnx
    import onnxruntime

    from SAMMed3DLib.serving.triton import check_repository, model_config_pb2, read_config
    from SAMMed3DLib.weights import sha256_of

    checkpoint = save_random_checkpoint(tmp_path / "tiny.pth", "tiny", seed=8)
    repository = tmp_path / "repo"
    (repository / "someone_elses_model").mkdir(parents=True)
    assert main(["export-triton", "--checkpoint", str(checkpoint), "--output", str(repository)]) == 0
    assert "sammed3d_encoder, sammed3d_encoder_fp16_cast, sammed3d_encoder_fp16" in capsys.readouterr().out
    assert sorted(p.name for p in repository.iterdir()) == [
        "sammed3d_encoder", "sammed3d_encoder_fp16", "sammed3d_encoder_fp16_cast", "someone_elses_model"]
    pb2 = model_config_pb2()
    encoder = read_config(repository / "sammed3d_encoder" / "config.pbtxt")
    assert (encoder.backend, encoder.max_batch_size, encoder.dynamic_batching.max_queue_delay_microseconds) == (
        "onnxruntime", 4, 2000)
    assert [(t.name, pb2.DataType.Name(t.data_type), list(t.dims)) for t in encoder.input] == [
        ("image", "TYPE_FP32", [1, 128, 128, 128])]
    assert [(t.name, pb2.DataType.Name(t.data_type), list(t.dims)) for t in encoder.output] == [
        ("embedding", "TYPE_FP32", [48, 8, 8, 8])]
    assert encoder.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_GPU
    assert encoder.parameters["source_checkpoint_sha256"].string_value == sha256_of(checkpoint)
    ensemble = read_config(repository / "sammed3d_encoder_fp16" / "config.pbtxt")
    assert ensemble.platform == "ensemble" and pb2.DataType.Name(ensemble.input[0].data_type) == "TYPE_FP16"
    assert ensemble.parameters["source_checkpoint_sha256"].string_value == sha256_of(checkpoint)
    assert list((repository / "sammed3d_encoder_fp16" / "1").iterdir()) == []
    assert set(check_repository(repository)) == {"sammed3d_encoder", "sammed3d_encoder_fp16",
                                                  "sammed3d_encoder_fp16_cast"}
    graph = onnx.load(str(repository / "sammed3d_encoder" / "1" / "model.onnx"), load_external_data=False).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a symbolic batch dimension

    # What the ensemble computes, on ONNX Runtime as Triton's backend runs it: FP16 patches, a batch of two (the
    # export compared the encoder with torch at batch 2 before writing it).
    patches = np.random.default_rng(6).normal(size=(2, 1, 128, 128, 128)).astype(np.float16)
    cast, encode = (onnxruntime.InferenceSession(str(repository / name / "1" / "model.onnx"),
                                                 providers=["CPUExecutionProvider"])
                    for name in ("sammed3d_encoder_fp16_cast", "sammed3d_encoder"))
    (as_fp32,) = cast.run(None, {"image_fp16": patches})
    np.testing.assert_array_equal(as_fp32, patches.astype(np.float32))
    (embeddings,) = encode.run(None, {"image": as_fp32})
    one_by_one = np.concatenate([encode.run(None, {"image": patch[None]})[0] for patch in as_fp32])
    assert embeddings.shape == (2, 48, 8, 8, 8) and np.abs(embeddings - one_by_one).max() <= 1e-5

    text = (repository / "sammed3d_encoder" / "config.pbtxt").read_text(encoding="utf-8")
    for broken, message in (
        (text.replace("dims: 48", "dims: 384"), re.escape("output 'embedding' has dims [384, 8, 8, 8], the ONNX "
                                                           "file's are [48, 8, 8, 8]")),
        (text.replace("TYPE_FP32", "TYPE_FP16", 1), "input 'image' is TYPE_FP16, the ONNX file's is TYPE_FP32"),
        (text.replace("TYPE_FP32", "TYPE_FLOAT32", 1), r"config.pbtxt: \d+:\d+ : .*TYPE_FLOAT32"),
    ):
        (repository / "sammed3d_encoder" / "config.pbtxt").write_text(broken, encoding="utf-8")
        with pytest.raises(SAMMed3DError, match=message):
            check_repository(repository)
