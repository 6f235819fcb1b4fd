"""Synthetic corpora with planted structure, each saved with its ground truth as JSON."""
