"""Shared pieces every stage uses: labels, data loading, model source, feeds, manifest.

Nothing here imports torch, onnxruntime, tensorrt or bitsandbytes at module level.
"""
