"""Reading and steering a Backpack through its sense vectors."""

from .projection import SenseProjection, sense_projection
from .words import word_ids, word_vectors

__all__ = ["SenseProjection", "sense_projection", "word_ids", "word_vectors"]
