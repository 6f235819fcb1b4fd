"""Synthetic corpora with planted structure, each written with its ground truth as JSON."""
