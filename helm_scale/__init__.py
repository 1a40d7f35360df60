"""helm_scale: distributed pretraining of codon-level mRNA language models."""
__version__ = "0.1.0"
