"""Gist tokens (Mu et al. 2023): prompt layout, attention masks, training, compressed-prompt caching, evaluation
and savings. Modules: layout, masks, data, train, cache, evaluate, savings (decoder-only) and t5 (encoder-decoder)."""
