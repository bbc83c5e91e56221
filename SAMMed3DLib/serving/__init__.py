"""The encoder as a stateless service over the Open Inference Protocol (v2, KServe's and Triton's HTTP/REST API):
what server and client agree on (`protocol`), the engine-agnostic encoder service (`encoder`), `sammed3d serve` on
KServe's model server (`kserve_server`, the only module that imports kserve) and the Triton model repository
(`triton`). The client is `SAMMed3DLib.backends.remote_predictor`.

Only the encoder is served: one encode per region of interest is the expensive part, and every later click decodes
on the cached embedding where the user is. A request carries the normalised 128^3 patch and nothing else.
"""
