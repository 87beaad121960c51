"""One calibration set from the validation split (never test), saved once and hashed, feeding
both the ONNX Runtime CalibrationDataReader and the TensorRT entropy calibrator."""
