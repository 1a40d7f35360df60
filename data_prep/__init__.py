"""Corpus preprocessing: raw mRNA files -> validated, codon-tokenised, zstd webdataset shards."""
