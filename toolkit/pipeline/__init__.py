"""Pipelines above the model: pre-processing, prompt assembly, post-processing, stage dumps."""
