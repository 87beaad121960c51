"""ONNX export of the fine-tuned classifier and its validation against PyTorch."""
