"""One module per `sammed3d` subcommand, each with `HELP`, `configure(parser)` and `run(args) -> int`.

Command modules import heavy dependencies (torch, onnxruntime) inside `run`, so `sammed3d --help` stays fast.
"""
