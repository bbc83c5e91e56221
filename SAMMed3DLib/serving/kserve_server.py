"""`sammed3d serve` on KServe's Python model server (kserve, pinned in the `serve` extra): KServe answers the v2 REST
API (health, server and model metadata, inference with binary tensors, errors as {"error": ...}, /metrics), the
encoder is `EncoderService`.

Why KServe: an existing pip-installable engine that speaks the Open Inference Protocol without Docker or Kubernetes.
MLServer, the other one, cannot take binary tensors over REST (every patch would be a 40 MB JSON body: 3 to 7 s a
request against 20 to 30 ms here). This module is the only one that imports kserve, and it works around four
shortcomings of KServe 0.21, each through a public class or argument (Testing/test_serving.py's
`test_kserve_offers_what_the_server_relies_on` fails if an upgrade takes one away):
1. `kserve.model_server` parses sys.argv when imported (prefixes of --http_port, --workers, --model_name...): it is
   imported with the command line hidden.
2. `ModelServer` listens on 0.0.0.0 whatever one wants: the socket is bound here (127.0.0.1 by default) and handed
   to `RESTServer.run(sockets=...)`; the model registry and data plane are built as ModelServer builds them.
3. KServe decodes binary inputs into a Python list of floats and back (`InferRequest.from_bytes`: 0.7 s for one
   8 MB patch): `_BinaryDataPlane` builds the request from the body's bytes with `InferRequest(raw_inputs=...)`,
   so the patch reaches the encoder as a view of the request body.
4. The v2 model metadata has no place for the checkpoint's SHA256: GET /v2/models/NAME/config answers with it as
   Triton does, and every inference response carries it in its parameters.
The token check and the request size limit are an ASGI middleware of our own (`_Guard`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import socket
import sys
import warnings
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional

from SAMMed3DLib.errors import SAMMed3DError
from SAMMed3DLib.serving.encoder import MAX_REQUEST_BYTES, BadRequest, EncoderService
from SAMMed3DLib.serving.protocol import (
    CHECKPOINT_PARAMETER,
    EMBEDDING,
    ENCODER_MODEL,
    ENCODER_MODEL_FP16,
    IMAGE,
    OPEN_PATHS,
)


@contextmanager
def _command_line_hidden() -> Iterator[None]:
    arguments, sys.argv = sys.argv, sys.argv[:1]
    try:
        yield
    finally:
        sys.argv = arguments


with _command_line_hidden():
    import kserve.model_server
    from kserve import InferOutput, InferRequest, InferResponse, Model
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING, INFERENCE_CONTENT_LENGTH_HEADER
    from kserve.errors import InvalidInput
    from kserve.model_repository import ModelRepository
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.infer_type import InferInput, RequestedOutput
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension
    from kserve.protocol.rest.server import RESTServer

MODEL_NAMES = (ENCODER_MODEL, ENCODER_MODEL_FP16)  # one model under both names: it takes FP32 and FP16


class _BinaryDataPlane(DataPlane):
    """KServe's data plane, with binary tensor data taken as bytes (not as a list of Python floats)."""

    def decode_inference_request(self, body: Any, headers: Dict[str, str], model_name: str) -> Any:
        json_length = headers.get(INFERENCE_CONTENT_LENGTH_HEADER)
        if not isinstance(body, bytes) or json_length is None:
            return super().decode_inference_request(body, headers, model_name)
        try:
            header = json.loads(body[: int(json_length)])
            specs = list(header["inputs"])
            binary = [int((spec.get("parameters") or {})["binary_data_size"]) for spec in specs]
        except (ValueError, KeyError, TypeError):  # JSON data, or something KServe's own decoding should judge
            return super().decode_inference_request(body, headers, model_name)
        view, offset, inputs, raw = memoryview(body), int(json_length), [], []
        for spec, size in zip(specs, binary):
            parameters = {k: v for k, v in spec["parameters"].items() if k != "binary_data_size"}
            inputs.append(InferInput(spec["name"], spec["shape"], spec["datatype"], parameters=parameters or None))
            raw.append(view[offset: offset + size])
            offset += size
        if offset != len(body):
            raise InvalidInput(f"the binary_data_size of the inputs add up to {offset - int(json_length)} bytes, the "
                               f"request carries {len(body) - int(json_length)}")
        outputs = [RequestedOutput(name=o["name"], parameters=o.get("parameters")) for o in header.get("outputs") or []]
        return InferRequest(model_name=model_name, infer_inputs=inputs, request_id=header.get("id"), raw_inputs=raw,
                            parameters=header.get("parameters"), request_outputs=outputs or None)


class _EncoderModel(Model):
    """The encoder as a KServe model: patches in, embeddings out, encoded on the service's worker thread."""

    def __init__(self, service: EncoderService) -> None:
        super().__init__(ENCODER_MODEL)
        self.service = service
        self.ready = True

    def get_input_types(self) -> List[Dict[str, Any]]:
        return [{"name": IMAGE, "datatype": "FP32", "shape": self.service.image_shape}]

    def get_output_types(self) -> List[Dict[str, Any]]:
        return [{"name": EMBEDDING, "datatype": "FP32", "shape": self.service.output_shape}]

    async def predict(self, payload: Any, headers: Any = None, response_headers: Any = None) -> Any:
        if not isinstance(payload, InferRequest) or len(payload.inputs) != 1:
            raise InvalidInput(f"send one input, {IMAGE!r}, in a v2 inference request")
        (tensor,) = payload.inputs
        try:
            self.service.check(tensor.name, tensor.datatype, tensor.shape)
            image = tensor.as_numpy()
        except (BadRequest, ValueError) as error:  # ValueError: the bytes do not fill the shape
            raise InvalidInput(str(error)) from None
        embedding = await asyncio.wrap_future(self.service.submit(image))
        output = InferOutput(EMBEDDING, list(embedding.shape), "FP32")
        output.set_data_from_numpy(embedding, binary_data=True)
        return InferResponse(
            response_id=payload.id or "", model_name=payload.model_name, infer_outputs=[output],
            parameters={CHECKPOINT_PARAMETER: self.service.checkpoint.sha256},
            use_binary_outputs=payload.use_binary_outputs, requested_outputs=payload.request_outputs,
        )


class _Guard:
    """ASGI middleware in front of KServe: the bearer token on every path but the health probes, no changes to the
    model repository, and requests no larger than `max_bytes`."""

    def __init__(self, app: Any, token: Optional[str], max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes
        self.expected = f"Bearer {token}".encode() if token else None

    async def __call__(self, scope: Dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        path = scope["path"]
        if self.expected and path not in OPEN_PATHS \
                and not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
            return await _answer(send, 401, "missing or wrong bearer token", [(b"www-authenticate", b"Bearer")])
        if path.startswith("/v2/repository"):
            return await _answer(send, 403, "this server's models cannot be loaded or unloaded")
        length = headers.get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_bytes:
            return await _answer(send, 413, f"a request may carry at most {self.max_bytes} bytes")
        received = 0

        async def limited() -> Dict[str, Any]:  # a body without Content-Length (chunked) is counted as it arrives
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise InvalidInput(f"a request may carry at most {self.max_bytes} bytes")
            return message

        return await self.app(scope, limited, send)


async def _answer(send: Any, status: int, error: str, headers: Optional[list] = None) -> None:
    body = json.dumps({"error": error}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one); SAMMed3DError if it cannot be had."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as error:
        raise SAMMed3DError(f"cannot listen on {host}:{port} ({error.strerror or error})") from None
    sock.setblocking(False)
    return sock


def serve(service: EncoderService, sock: socket.socket, token: Optional[str] = None,
          tls_cert: Optional[str] = None, tls_key: Optional[str] = None) -> None:
    """Answer v2 requests on `sock` until SIGINT or SIGTERM (uvicorn's graceful stop)."""
    repository = ModelRepository()
    model = _EncoderModel(service)
    for name in MODEL_NAMES:
        repository.update(model, name)
    app = kserve.model_server.app

    @app.get("/v2/models/{model_name}/config")
    async def model_config(model_name: str) -> Any:  # Triton's model configuration extension
        if model_name not in MODEL_NAMES:
            from fastapi.responses import JSONResponse

            return JSONResponse({"error": f"Model with name {model_name} does not exist."}, status_code=404)
        return service.model_config(model_name)

    app.add_middleware(_Guard, token=token, max_bytes=MAX_REQUEST_BYTES)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    warnings.filterwarnings("ignore", message=".*ORJSONResponse is deprecated")  # kserve 0.21 with fastapi >= 0.120
    rest = RESTServer(FASTAPI_APP_IMPORT_STRING, _BinaryDataPlane(repository), ModelRepositoryExtension(repository),
                      sock.getsockname()[1], grace_period=5, ssl_certfile=tls_cert, ssl_keyfile=tls_key)
    rest.run(sockets=[sock])
