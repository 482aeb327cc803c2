"""Contrastive LoRA fine-tuning on Ray Train with DeepSpeed ZeRO-3."""
