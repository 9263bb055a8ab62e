"""Deployment of trained runs: ONNX export, onnxruntime prediction, HTTP service, DICOM SR."""
