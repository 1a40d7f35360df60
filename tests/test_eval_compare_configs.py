"""The XE vs HXE head-to-head configs differ in the loss (and where they write) only."""
from dataclasses import asdict
from pathlib import Path

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
    assert cfg.model.num_parameters() < 2e6
    assert cfg.data.seq_len <= cfg.model.max_seq_len and cfg.model.attention == "causal"
