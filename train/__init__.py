"""Fine-tuning recipes: the FP32 baseline (finetune), later QAT and QLoRA."""
