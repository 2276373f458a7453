"""Loom's built-in model: the procedural data set, the training script and the evaluation."""
