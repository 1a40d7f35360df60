"""Generation: sampling from a causal export (sampling, decoding), metrics of generated
against real sequences (metrics); their commands (generate_cmd, metrics_cmd)."""
