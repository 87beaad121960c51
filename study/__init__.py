"""Quantization study (issue 7): weight quantizers written from scratch, policies, and their
comparison with bitsandbytes. Nothing here imports bitsandbytes at module level."""
