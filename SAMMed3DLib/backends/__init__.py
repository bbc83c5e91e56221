"""What runs the network: the predictor protocol and `load_predictor` (`predictor`), PyTorch (`torch_predictor`),
ONNX Runtime (`onnx_predictor`, no torch) and the export that feeds it (`onnx_export`)."""
