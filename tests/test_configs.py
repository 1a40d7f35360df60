from pathlib import Path

import pytest

from helm_scale.train_config import load_train_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name, params", [("tiny", 0.11e6), ("helm_20m", 21e6), ("helm_50m", 50e6),
                                          ("helm_100m", 100e6), ("helm_1b", 1.2e9)])
def test_shipped_configs_load_and_have_their_size(name, params):
    cfg = load_train_config(str(CONFIGS / f"{name}.yaml"))
    assert abs(cfg.model.num_parameters() - params) < 0.05 * params
    cfg.model.validate_for_tp(cfg.parallel.tensor_parallel)
    assert cfg.data.seq_len <= cfg.model.max_seq_len
    assert (cfg.model.attention == "causal") == (cfg.data.objective == "clm")
