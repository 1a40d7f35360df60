"""Helpers for the evaluation tests: tiny exports and a tiny prepared corpus."""
from pathlib import Path

import torch

from data_prep.synth import generate, write_fasta
from helm_scale.export import save_export
from helm_scale.models.config import ModelConfig
from helm_scale.models.registry import build_model
from helm_scale.train_config import DataConfig, TrainConfig
from tests.corpora import prepare

TINY_MODEL = {"num_layers": 1, "hidden_size": 32, "ffn_hidden_size": 64, "num_heads": 2, "max_seq_len": 64}


def tiny_export(out: Path, objective: str = "clm", seed: int = 0, std: float = 0.02, **model) -> Path:
    """A randomly initialised model (normal(0, std) weights, like training's init), exported."""
    attention = "causal" if objective == "clm" else "bidirectional"
    cfg = ModelConfig(**{**TINY_MODEL, "attention": attention, **model})
    torch.manual_seed(seed)
    net = build_model(cfg)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.ndim > 1:
                p.normal_(0.0, std)
    train_cfg = TrainConfig(model=cfg, data=DataConfig(objective=objective, seq_len=cfg.max_seq_len))
    return save_export(out, net.state_dict(), train_cfg, step=7)


def tiny_dataset(root: Path, records: int = 120, test_fraction: float = 0.3, val_fraction: float = 0.0) -> Path:
    write_fasta(root / "corpus.fa", generate(records, seed=3, median_codons=25, min_codons=12, defect_rate=0))
    return prepare(root / "shards", [root / "corpus.fa"], val_fraction=val_fraction, test_fraction=test_fraction)
