"""Integer IR, importers (QDQ ONNX, int8 TFLite) and emitters (.tflite, C, weight blob). No torch."""
