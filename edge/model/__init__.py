"""The anomaly model at runtime: feature vectors from decisions, ONNX scoring, combination with the rules."""
