"""The learned half of the method: a coarse-to-fine registration network, its training (single
process or torchrun), inference with optional per-pair fine-tuning, and cohort batches."""
