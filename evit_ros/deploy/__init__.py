"""Deployment artifacts: ONNX export and graph checks, TensorRT engine builds and the accuracy gate."""
