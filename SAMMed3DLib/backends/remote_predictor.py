"""The remote backend: the encoder runs on an inference server, the decoder here.

    predictor = RemotePredictor("https://gpu1.example.org:8000", "sam_med3d_turbo_onnx", token="...")
    session = InteractiveSession(predictor, Volume.read("ct.nrrd"))

The expensive step, one encode per region of interest, goes to a server that speaks the Open Inference Protocol (v2):
`sammed3d serve`, NVIDIA Triton with the repository of `sammed3d export-triton`, or KServe. Every click after it is a
local decode on the cached embedding, from the same checkpoint's decoder: an ONNX export (numpy and onnxruntime
only, no torch) or, where torch is installed, the checkpoint itself. The decoder and the server must come from the
same checkpoint (their SHA256 are compared when connecting, and on every answer that reports it).

What is sent: the normalised 128^3 patch (a 192 mm cube of intensities, no patient data or file metadata) and, if
given, the token. Requests use tritonclient's HTTP client: https URLs verify the certificate (the system's trusted
authorities, or `ca_file`); the token is sent only to the URL it was given with, and never over plain http to
another machine. Timeouts bound every call; a broken or refused connection is retried once after `RETRY_DELAY_S`.
tritonclient's client is gevent based and must stay in the thread that made it, so each thread gets its own.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union
from urllib.parse import urlsplit

import numpy as np

from SAMMed3DLib.backends.predictor import BACKENDS
from SAMMed3DLib.errors import (
    AccessDenied,
    CheckpointMismatch,
    InsecureToken,
    MissingPackages,
    ModelMissing,
    NotAV2Server,
    SAMMed3DError,
    ServerError,
    ServerNotReady,
    ServerUnreachable,
    TLSVerificationFailed,
    UnknownChoice,
)
from SAMMed3DLib.interactive.geometry import PATCH_SIZE
from SAMMed3DLib.serving.protocol import (
    CHECKPOINT_NAME_PARAMETER,
    CHECKPOINT_PARAMETER,
    DATATYPES,
    DEVICE_PARAMETER,
    EMBEDDING,
    IMAGE,
    MODEL_FOR_DATATYPE,
    READY_PATH,
    is_loopback,
)

CONNECT_TIMEOUT_S = 10.0
TIMEOUT_S = 120.0  # one request; an encode queued behind others on a busy CPU server can take a while
RETRY_DELAY_S = 0.5


@dataclass(frozen=True)
class ServerInfo:
    """What a server says about itself and the encoder model it serves (for the model panel's connection test).

    `server`: name and version ("triton 2.50.0", "kserve 0.21.0"); `checkpoint_sha256`/`checkpoint`: the checkpoint
    the encoder comes from (None where the server does not say); `device`: where it encodes, where it says;
    `round_trip_s`: seconds of one encode of a blank patch, sending included (None if not measured)."""

    url: str
    server: str
    model: str
    checkpoint_sha256: Optional[str]
    checkpoint: Optional[str] = None
    device: Optional[str] = None
    round_trip_s: Optional[float] = None

    def describe(self) -> str:
        """One line for people, e.g. `kserve 0.21.0 at http://gpu1:8000, model sammed3d_encoder on cuda,
        checkpoint sam_med3d_turbo.pth (SHA256 8f3c...), encode round trip 0.12 s`."""
        where = f" on {self.device}" if self.device else ""
        sha = f"SHA256 {self.checkpoint_sha256[:12]}..." if self.checkpoint_sha256 else "no checkpoint SHA256"
        checkpoint = f"checkpoint {self.checkpoint} ({sha})" if self.checkpoint else sha
        trip = f", encode round trip {self.round_trip_s:.2f} s" if self.round_trip_s is not None else ""
        return f"{self.server} at {self.url}, model {self.model}{where}, {checkpoint}{trip}"


def check_connection(
    url: str,
    token: Optional[str] = None,
    *,
    dtype: str = "fp32",
    model: Optional[str] = None,
    ca_file: Optional[Union[str, Path]] = None,
    timeout: float = TIMEOUT_S,
) -> ServerInfo:
    """Connect to the server, check that it is a ready v2 server with the encoder model, and time one encode of a
    blank patch; a `ServerError` subclass says what is wrong (unreachable, not v2, not ready, no such model, access
    refused, certificate not verified). Arguments as for `RemotePredictor`."""
    datatype, model = _datatype_and_model(dtype, model)
    connection = ServerConnection(url, token, ca_file, timeout)
    try:
        info = connection.describe(model)
        started = time.perf_counter()
        connection.encode(model, np.zeros((1, 1) + (PATCH_SIZE,) * 3, DATATYPES[datatype]))
        return replace(info, round_trip_s=time.perf_counter() - started)
    finally:
        connection.drop_client()


def _datatype_and_model(dtype: str, model: Optional[str]) -> Tuple[str, str]:
    """The v2 datatype for "fp32" or "fp16" and the model to send it to (by default the one for that datatype)."""
    datatype = dtype.upper()
    if datatype not in DATATYPES:
        raise UnknownChoice("data type", dtype, [name.lower() for name in DATATYPES])
    return datatype, model or MODEL_FOR_DATATYPE[datatype]


def check_same_checkpoint(info: ServerInfo, local_sha256: Optional[str], decoder: str) -> None:
    """`CheckpointMismatch` unless the server encodes with the checkpoint of SHA256 `local_sha256`, the one the
    local decoder (named `decoder`) comes from; a side that does not say counts as a mismatch."""
    if info.checkpoint_sha256 is None or local_sha256 is None or info.checkpoint_sha256 != local_sha256.lower():
        raise CheckpointMismatch(info.url, info.checkpoint_sha256, local_sha256, decoder)


class RemotePredictor:
    """The predictor protocol with `encode` on the server at `url` and `decode` here.

    `decoder`: an ONNX export folder (only its decoder.onnx is needed) or a decoder.onnx file, run on ONNX Runtime
    with the providers `device` asks for; or a predictor whose `decode` takes the numpy embedding, with the SHA256
    of its checkpoint as `checkpoint_sha256`. `dtype` "fp16" sends half the bytes (the model `ENCODER_MODEL_FP16`),
    for slow links; on a fast one "fp32" is quicker. Connecting checks the server and that it encodes with the
    decoder's checkpoint. `last_round_trip_s` is the last encode's time, sending and receiving included.
    """

    def __init__(
        self,
        url: str,
        decoder: Union[str, Path, Any],
        token: Optional[str] = None,
        *,
        checkpoint_sha256: Optional[str] = None,
        dtype: str = "fp32",
        model: Optional[str] = None,
        ca_file: Optional[Union[str, Path]] = None,
        timeout: float = TIMEOUT_S,
        device: str = "auto",
    ) -> None:
        self._datatype, self.model = _datatype_and_model(dtype, model)
        self._connection = ServerConnection(url, token, ca_file, timeout)  # the URL is checked before loading
        from SAMMed3DLib.backends.onnx_predictor import CHECKPOINT_SHA256_KEY, OnnxDecoder

        if isinstance(decoder, (str, Path)):
            decoder = OnnxDecoder(decoder, providers=device)
            checkpoint_sha256 = checkpoint_sha256 or decoder.metadata.get(CHECKPOINT_SHA256_KEY)
            decoder_name = str(decoder.path)
        else:
            decoder_name = getattr(decoder, "label", type(decoder).__name__)
        self.decoder = decoder
        self.url = self._connection.url
        self.info = self._connection.describe(self.model)
        check_same_checkpoint(self.info, checkpoint_sha256, decoder_name)
        # The checkpoint as an export records it (`provenance.checkpoint` reads it, so it is not hashed again).
        self.metadata: Dict[str, str] = {**getattr(decoder, "metadata", {}),
                                         CHECKPOINT_SHA256_KEY: str(checkpoint_sha256).lower()}
        self._decoder_name = decoder_name
        self.device = decoder.device
        where = f" on {self.info.device}" if self.info.device else ""
        self.label = f"{BACKENDS['remote']} {self.url} ({self.info.server}{where}), decoder {decoder.label}"
        self.last_round_trip_s: Optional[float] = None

    def encode(self, image: np.ndarray) -> np.ndarray:
        array = np.ascontiguousarray(image, DATATYPES[self._datatype])
        started = time.perf_counter()
        embedding, served = self._connection.encode(self.model, array)
        self.last_round_trip_s = time.perf_counter() - started
        if served is not None and served != self.info.checkpoint_sha256:  # the server was restarted with another
            raise CheckpointMismatch(self.url, served, self.info.checkpoint_sha256, self._decoder_name)
        return embedding

    def decode(
        self, embedding: np.ndarray, points: np.ndarray, labels: np.ndarray, mask_logits: np.ndarray
    ) -> Tuple[np.ndarray, np.ndarray]:
        return self.decoder.decode(embedding, points, labels, mask_logits)

    def disconnect(self) -> None:
        """Close this thread's connection (others close when their thread ends); the next call connects again."""
        self._connection.drop_client()


class _Bearer:
    """tritonclient plugin: the token on every request of the one client it is registered with."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def __call__(self, request: Any) -> None:
        request.headers["Authorization"] = self._header


def _import_tritonclient():
    MissingPackages.require("the remote backend", "remote", "tritonclient", "geventhttpclient")
    import tritonclient.http as triton_http
    from tritonclient.utils import InferenceServerException

    return triton_http, InferenceServerException


class ServerConnection:
    """One server URL with its token and trust: v2 calls through tritonclient with errors as `ServerError`s.

    `url`: http(s)://HOST:PORT[/PATH]. Each thread gets its own tritonclient client, dropped after a connection
    error so that the next call connects afresh (a restarted server works again without a new predictor).
    """

    def __init__(
        self, url: str, token: Optional[str] = None, ca_file: Optional[Union[str, Path]] = None,
        timeout: float = TIMEOUT_S,
    ) -> None:
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment \
                or parts.username or parts.password:
            raise SAMMed3DError(f"{url!r} is not a server URL like http://HOST:PORT or https://HOST:PORT")
        try:
            parts.port  # noqa: B018 (raises for a port that is not a number)
        except ValueError:
            raise SAMMed3DError(f"{url!r} has no valid port number") from None
        self.url = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self._https = parts.scheme == "https"
        if token and not self._https and not is_loopback(parts.hostname):
            raise InsecureToken(self.url)
        if ca_file is not None and not Path(ca_file).is_file():
            raise SAMMed3DError(f"{ca_file}: no such certificate file")
        self._target = parts.netloc + parts.path.rstrip("/")  # tritonclient takes the URL without its scheme
        self._token = token or None
        self._ca_file = str(ca_file) if ca_file is not None else None
        self._timeout = float(timeout)
        self._http, self._server_exception = _import_tritonclient()
        self._local = threading.local()

    # -- calls -------------------------------------------------------------------------------------------------

    def describe(self, model: str) -> ServerInfo:
        """Check server, readiness and model; what the server says about them."""
        metadata = self._call("/v2", lambda client: client.get_server_metadata(), expect_v2=True)
        if not isinstance(metadata, dict) or not {"name", "version"} <= set(metadata):
            raise NotAV2Server(self.url, "its answer to GET /v2 is not server metadata")
        if not self._call(READY_PATH, lambda client: client.is_server_ready()):
            raise ServerNotReady(self.url)
        model_metadata = self._call(f"/v2/models/{model}", lambda client: client.get_model_metadata(model), model=model)
        if not self._call(f"/v2/models/{model}/ready", lambda client: client.is_model_ready(model)):
            raise ServerNotReady(self.url, model)
        try:
            parameters = self._call(f"/v2/models/{model}/config",
                                    lambda client: client.get_model_config(model)).get("parameters") or {}
        except ServerError as error:
            if type(error) is not ServerError:  # unreachable, refused, not verified
                raise
            parameters = {}  # no model configuration extension (MLServer): its metadata may carry them
        if not parameters:
            parameters = model_metadata.get("parameters") or {}

        def parameter(key: str) -> Optional[str]:
            value = parameters.get(key)
            value = value.get("string_value") if isinstance(value, dict) else value  # Triton's form, or plain
            return str(value) if value else None

        sha256 = parameter(CHECKPOINT_PARAMETER)
        return ServerInfo(self.url, f"{metadata['name']} {metadata['version']}", model,
                          sha256.strip().lower() if sha256 else None, parameter(CHECKPOINT_NAME_PARAMETER),
                          parameter(DEVICE_PARAMETER))

    def encode(self, model: str, image: np.ndarray) -> Tuple[np.ndarray, Optional[str]]:
        """The embedding of `image` (float32) and the checkpoint SHA256 the response reports (None if it does not)."""
        datatype = next(name for name, kind in DATATYPES.items() if np.dtype(kind) == image.dtype)

        def infer(client: Any) -> Any:
            tensor = self._http.InferInput(IMAGE, list(image.shape), datatype)
            tensor.set_data_from_numpy(image, binary_data=True)
            return client.infer(model, [tensor], outputs=[self._http.InferRequestedOutput(EMBEDDING, binary_data=True)])

        result = self._call(f"/v2/models/{model}/infer", infer, model=model)
        embedding = result.as_numpy(EMBEDDING)
        if embedding is None or embedding.ndim != 5 or embedding.shape[0] != image.shape[0]:
            raise ServerError(self.url, f"the server at {self.url} answered without an {EMBEDDING!r} of "
                                        f"{image.shape[0]} patch(es)")
        served = (result.get_response().get("parameters") or {}).get(CHECKPOINT_PARAMETER)
        return embedding.astype(np.float32, copy=False), (str(served).lower() if served else None)

    def drop_client(self) -> None:
        """Close this thread's client; the next call makes a new one."""
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            client.close()

    # -- one client per thread, errors as facts ------------------------------------------------------------------

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            options: Dict[str, Any] = {}
            if self._https:
                options["ssl"] = True
                if self._ca_file:
                    options["ssl_options"] = {"ca_certs": self._ca_file}
            client = self._http.InferenceServerClient(
                self._target, connection_timeout=min(CONNECT_TIMEOUT_S, self._timeout),
                network_timeout=self._timeout, **options)
            if self._token:
                client.register_plugin(_Bearer(self._token))
            self._local.client = client
        return client

    def _call(self, path: str, call: Callable[[Any], Any], model: Optional[str] = None, expect_v2: bool = False) -> Any:
        """Run one tritonclient call; a refused or broken connection is retried once after `RETRY_DELAY_S`."""
        for attempt in (1, 2):
            try:
                return call(self._client())
            except self._server_exception as error:
                raise self._http_error(error, path, model, expect_v2) from None
            except ssl.SSLCertVerificationError as error:
                self.drop_client()
                raise TLSVerificationFailed(self.url, error.verify_message or error.reason) from None
            except ssl.SSLError as error:
                self.drop_client()
                raise ServerUnreachable(self.url, f"TLS handshake failed: {error.reason or error}") from None
            except (ConnectionError, http.client.HTTPException) as error:  # refused, reset, closed mid-answer
                self.drop_client()
                if attempt == 1:
                    time.sleep(RETRY_DELAY_S)
                    continue
                raise ServerUnreachable(self.url, _reason(error)) from None
            except socket.gaierror:
                self.drop_client()
                raise ServerUnreachable(self.url, "host name not found") from None
            except (TimeoutError, socket.timeout):
                self.drop_client()
                raise ServerUnreachable(self.url, f"no answer within {self._timeout:g} s") from None
            except OSError as error:
                self.drop_client()
                raise ServerUnreachable(self.url, _reason(error)) from None
            except ValueError as error:  # a 200 answer that is not JSON
                if expect_v2:
                    raise NotAV2Server(self.url, f"its answer to GET {path} is not JSON") from None
                raise ServerError(self.url, f"the server at {self.url} sent an unreadable answer to {path} "
                                            f"({error})") from None
        raise AssertionError("unreachable")

    def _http_error(self, error: Any, path: str, model: Optional[str], expect_v2: bool) -> ServerError:
        status = error.status()
        message = (error.message() or "").splitlines()[0] if error.message() else ""
        if status in ("401", "403"):
            return AccessDenied(self.url, int(status), self._token is not None, message)
        if status is None:  # raised by tritonclient itself, before or after the request
            return ServerError(self.url, f"request {path} to {self.url} failed: {message}")
        if expect_v2 or "while decoding the response" in message:
            return NotAV2Server(self.url, f"GET {path} answered HTTP {status}"
                                          + ("" if "while decoding" in message else f" ({message})"))
        if model is not None and (status == "404" or (status == "400" and not path.endswith("/infer"))):
            return ModelMissing(self.url, model)  # Triton answers 400 for an unknown model, KServe 404
        return ServerError(self.url, f"the server at {self.url} failed {path} (HTTP {status}: {message})")


def _reason(error: BaseException) -> str:
    text = str(error).strip()
    kind = {ConnectionRefusedError: "connection refused", ConnectionResetError: "connection reset"}.get(type(error))
    return kind or (f"{type(error).__name__}: {text}" if text else type(error).__name__)
