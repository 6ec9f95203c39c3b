"""Compression: INT8 PTQ/QAT to QDQ ONNX, pruning, binary conversion, precision plans."""
