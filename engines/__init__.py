"""`make engines`: build every artifact (baseline, ONNX, quantized variants, TensorRT plans) with a
manifest, skipping what is already current. TensorRT is imported only inside the TensorRT steps."""
