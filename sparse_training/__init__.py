"""Sparse-network training: data, models, masks, initializations, methods, trainer, run directories, suite."""
