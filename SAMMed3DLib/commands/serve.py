"""Serve the encoder of a checkpoint over the Open Inference Protocol (v2), for `--backend remote` clients.

One GPU server encodes for many workstations: a client sends the normalised 128^3 patch of each new region (a 192 mm
cube of intensities, nothing else) and decodes every click itself. The server is stateless and runs on KServe's
model server (pip install 'SAMMed3DLib[serve]'); the same protocol is spoken by Triton (`sammed3d export-triton`).
It serves the model sammed3d_encoder (FP32 patches) also as sammed3d_encoder_fp16 (FP16 patches), reports the
checkpoint's SHA256 in GET /v2/models/sammed3d_encoder/config and answers GET /v2/health/ready once loaded.
It listens on 127.0.0.1 unless --host says otherwise; with --token-file every request but the health probes needs
`Authorization: Bearer TOKEN`; with --tls-cert and --tls-key it speaks https. Ctrl+C (or SIGTERM) stops it.

examples:
  sammed3d serve --checkpoint turbo --device cuda
  sammed3d serve --checkpoint turbo --host 0.0.0.0 --port 8000 --token-file token.txt \\
      --tls-cert server.crt --tls-key server.key
  sammed3d serve --backend onnx --checkpoint sam_med3d_turbo_onnx --device cuda
  (on a workstation) sammed3d predict ct.nrrd --backend remote --server https://gpu1:8000 --token-file token.txt \\
      --checkpoint sam_med3d_turbo_onnx --point X Y Z --output mask.nrrd
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from SAMMed3DLib.backends.predictor import BACKENDS, DEVICES
from SAMMed3DLib.commands._common import add_checkpoint_argument, add_token_argument, read_token, resolve_model
from SAMMed3DLib.serving.encoder import SERVED_BACKENDS
from SAMMed3DLib.serving.protocol import is_loopback

HELP = "serve a checkpoint's encoder to --backend remote clients (Open Inference Protocol, v2)"


def configure(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_argument(parser, "; with --backend onnx, the folder of an ONNX export")
    parser.add_argument("--backend", choices=SERVED_BACKENDS, default="torch",
                        help=f"what encodes: {', '.join(f'{b} ({BACKENDS[b]})' for b in SERVED_BACKENDS)}; "
                             "default torch")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="where it encodes (default: auto)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="the address to listen on (default 127.0.0.1: this computer only; 0.0.0.0: all)")
    parser.add_argument("--port", type=int, default=8000, help="the port (default 8000; 0: any free port)")
    add_token_argument(parser, "the bearer token that clients must send")
    parser.add_argument("--tls-cert", type=Path, metavar="FILE", help="the server's certificate (PEM), for https")
    parser.add_argument("--tls-key", type=Path, metavar="FILE", help="the certificate's private key (PEM)")


def run(args: argparse.Namespace) -> int:
    from SAMMed3DLib.errors import MissingPackages, SAMMed3DError

    MissingPackages.require("serving the encoder", "serve", "kserve")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise SAMMed3DError("https needs both --tls-cert and --tls-key")
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path is not None and not path.is_file():
            raise SAMMed3DError(f"{flag} {path}: no such file")
    token = read_token(args.token_file)
    loopback = is_loopback(args.host)
    if token and not loopback and args.tls_cert is None:
        raise SAMMed3DError(f"--token-file on --host {args.host} without https would send the token readably over "
                            "the network: add --tls-cert and --tls-key (or keep the default host behind a TLS proxy)")
    from SAMMed3DLib.serving import kserve_server
    from SAMMed3DLib.serving.encoder import open_service

    sock = kserve_server.listen(args.host, args.port)  # before loading: a taken port is reported at once
    checkpoint = resolve_model(args)
    service = open_service(args.backend, checkpoint, args.device)
    host, port = sock.getsockname()[:2]
    scheme = "https" if args.tls_cert else "http"
    url = f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"
    print(f"serving {service.checkpoint.name or checkpoint} (SHA256 {service.checkpoint.sha256}) with "
          f"{service.predictor.label} at {url}{' (token required)' if token else ''}; Ctrl+C stops", flush=True)
    if not loopback and not token:
        print(f"sammed3d serve: warning: anyone who can reach {url} can use it; consider --token-file",
              file=sys.stderr, flush=True)
    try:
        kserve_server.serve(service, sock, token, args.tls_cert and str(args.tls_cert),
                            args.tls_key and str(args.tls_key))
    except KeyboardInterrupt:  # uvicorn stops gracefully, then re-raises the interrupt
        pass
    finally:
        service.shutdown()
    return 0
