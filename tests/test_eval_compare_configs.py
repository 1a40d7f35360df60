"""The head-to-head configs: XE and HXE differ in the loss (and where they write) only; the LSTM baseline in the network."""
from dataclasses import asdict
from pathlib import Path

from helm_scale.models.registry import num_parameters
from helm_scale.train_config import load_train_config

COMPARE = Path(__file__).resolve().parents[1] / "configs" / "compare"


def test_pair_differs_only_in_loss_and_run_dir():
    xe, hxe = (asdict(load_train_config(str(COMPARE / f"{n}.yaml"))) for n in ("xe", "hxe"))
    assert (xe["loss"]["name"], hxe["loss"]["name"]) == ("xe", "hxe")
    assert hxe["loss"]["tree"] == "helm" and hxe["loss"]["alpha"] > 0
    assert xe["run"]["run_dir"] != hxe["run"]["run_dir"]
    for d in (xe, hxe):
        del d["loss"], d["run"]["run_dir"]
    assert xe == hxe


def test_pair_is_cpu_sized():
    cfg = load_train_config(str(COMPARE / "xe.yaml"))
    assert num_parameters(cfg.model) < 2e6
    assert cfg.data.seq_len <= cfg.model.max_seq_len and cfg.model.attention == "causal"


def test_lstm_baseline_matches_the_pair_but_for_the_network():
    """The recurrent baseline trains on the pair's data, optimizer, schedule and rows per
    step with XE; only the network, unpacked rows (an LSTM cannot take packed ones) and its
    run dir differ, and its size is within 5% of the transformers'."""
    xe, lstm = (load_train_config(str(COMPARE / f"{n}.yaml")) for n in ("xe", "lstm"))
    assert lstm.model.arch == "lstm" and lstm.loss.name == "xe" and not lstm.data.pack
    assert abs(num_parameters(lstm.model) / num_parameters(xe.model) - 1) < 0.05
    a, b = asdict(xe), asdict(lstm)
    for d in (a, b):
        del d["model"], d["run"]["run_dir"], d["data"]["pack"]
    assert a == b


def test_mamba_and_hyena_match_the_pair_but_for_the_network():
    """HELM's other backbones at the transformers' size (within 5%), on the pair's data,
    optimizer, schedule and rows per step with XE; like the LSTM they take unpacked rows."""
    xe = load_train_config(str(COMPARE / "xe.yaml"))
    for arch in ("mamba", "hyena"):
        cfg = load_train_config(str(COMPARE / f"{arch}.yaml"))
        assert cfg.model.arch == arch and cfg.loss.name == "xe" and not cfg.data.pack
        assert abs(num_parameters(cfg.model) / num_parameters(xe.model) - 1) < 0.05, arch
        a, b = asdict(xe), asdict(cfg)
        for d in (a, b):
            del d["model"], d["run"]["run_dir"], d["data"]["pack"]
        assert a == b, arch
