"""Evaluation of pretrained codon models: downstream probes, annotation and language-model metrics."""
