"""What runs the network: the predictor protocol and `load_predictor` (`predictor`), PyTorch (`torch_predictor`),
ONNX Runtime (`onnx_predictor`, no torch), the export that feeds it (`onnx_export`), and the encoder on an
inference server with the decoder here (`remote_predictor`; the server side is `SAMMed3DLib.serving`)."""
