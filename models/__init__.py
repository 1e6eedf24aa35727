"""The ONNX anomaly model, its training code and model card."""
