"""One evaluator for every backend and variant: `python -m evaluate --backend ... --variant ...`.

Importing this package imports no heavy library (torch, onnxruntime, tensorrt, bitsandbytes);
they are loaded by the runner that needs them.
"""
