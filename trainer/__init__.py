"""Training: datasets, model zoo, engine, checkpoints and ONNX export."""
