"""Attention heads and FFNs of any supported Hugging Face causal LM: gates, importance, pruning, induction heads,
few-shot task evaluation (Bansal et al., ACL 2023), without forking the model code."""

from .adapters import ARCHITECTURES, HeadAdapter, adapter_for
from .gates import frozen_parameters, masking, probing

__all__ = ["ARCHITECTURES", "HeadAdapter", "adapter_for", "frozen_parameters", "masking", "probing"]
