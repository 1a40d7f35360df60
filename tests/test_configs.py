from pathlib import Path

import pytest

from helm_scale.models.registry import num_parameters
from helm_scale.train_config import load_train_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name, params", [("tiny", 0.11e6), ("helm_20m", 21e6), ("helm_50m", 50e6),
                                          ("helm_100m", 100e6), ("helm_1b", 1.2e9)])
def test_shipped_configs_load_and_have_their_size(name, params):
    cfg = load_train_config(str(CONFIGS / f"{name}.yaml"))
    assert abs(num_parameters(cfg.model) - params) < 0.05 * params
    cfg.model.validate_for_tp(cfg.parallel.tensor_parallel)
    assert cfg.data.seq_len <= cfg.model.max_seq_len
    assert (cfg.model.attention == "causal") == (cfg.data.objective == "clm")


@pytest.mark.parametrize("name, arch, attention, layers, hidden, params", [
    ("mamba_clm", "mamba", "causal", 40, 256, 49e6),
    ("mamba_mlm", "mamba", "bidirectional", 20, 256, 52e6),
    ("hyena", "hyena", "causal", 7, 768, 50e6)])
def test_helm_mamba_and_hyena_configs_have_the_papers_shapes(name, arch, attention, layers, hidden, params):
    cfg = load_train_config(str(CONFIGS / f"{name}.yaml"))
    m = cfg.model
    assert (m.arch, m.attention, m.num_layers, m.hidden_size) == (arch, attention, layers, hidden)
    assert abs(num_parameters(m) - params) < 0.02 * params
    assert cfg.parallel.tensor_parallel == 1 and not cfg.data.pack
    assert (m.attention == "causal") == (cfg.data.objective == "clm")
    if arch == "mamba":
        assert m.ffn_hidden_size == 1024 and cfg.optim.lr == 1e-3 and m.position == "learned"
    else:
        assert m.ffn_hidden_size == 3072 and (cfg.optim.lr, cfg.schedule.min_lr) == (1e-4, 1e-6)
