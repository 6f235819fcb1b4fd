"""Reading and steering a Backpack through its sense vectors."""

from .projection import SenseProjection, sense_projection, word_token_ids

__all__ = ["SenseProjection", "sense_projection", "word_token_ids"]
