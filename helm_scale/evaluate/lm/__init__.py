"""Language-model metrics of an export: intrinsic (held-out loss, perplexity, accuracies),
likelihoods and embeddings of raw sequences (scoring), mutation detection; their commands
(intrinsic_cmd, mutation_cmd)."""
