"""Job launch (local torchrun, multi-node, SLURM). Starts processes; never imports the trainer."""
