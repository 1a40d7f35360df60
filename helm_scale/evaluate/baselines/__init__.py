"""Baselines the models are compared with: n-gram language models (ngram; ngram_cmd)."""
