"""Checkpoint directories, safe loading and exports, without process groups (fast)."""
from __future__ import annotations

import io
import os
import pickle

import pytest
import torch

from helm_scale.parallel.ddp_engine import _MetadataUnpickler
from helm_scale.parallel.deepspeed_engine import weights_only_torch_load
from helm_scale.checkpoint.store import LATEST, CheckpointStore
from helm_scale.export import load_exported, save_export
from helm_scale.models.config import ModelConfig
from helm_scale.models.transformer import Transformer
from helm_scale.train_config import TrainConfig


def _commit(store: CheckpointStore, step: int, payload: bytes = b"weights") -> None:
    staging = store.begin(step)
    (staging / "model").mkdir()
    (staging / "model" / "shard.bin").write_bytes(payload * 100)
    store.commit(step, {"step": step})


def test_commit_is_atomic_and_moves_latest_last(tmp_path):
    store = CheckpointStore(tmp_path)
    _commit(store, 5)
    assert store.steps() == [5] and (tmp_path / LATEST).read_text().strip() == "step-00000005"
    store.begin(10)  # a save that never finished: not a checkpoint
    (store.staging(10) / "half").write_bytes(b"x")
    assert store.steps() == [5] and store.newest_good() == 5
    _commit(store, 10)  # a later save of that step starts its staging afresh
    assert store.steps() == [5, 10] and not store.problems(10)
    assert sorted(p.name for p in store.path(10).iterdir()) == ["meta.json", "model"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "meta"])
def test_damaged_newest_is_reported_and_skipped(tmp_path, damage):
    store = CheckpointStore(tmp_path)
    _commit(store, 1)
    _commit(store, 2)
    victim = store.path(2) / "model" / "shard.bin"
    data = bytearray(victim.read_bytes())
    if damage == "truncate":
        victim.write_bytes(data[:-10])
    elif damage == "flip":
        data[3] ^= 1
        victim.write_bytes(data)
    elif damage == "delete":
        victim.unlink()
    else:
        (store.path(2) / "meta.json").write_text("{not json")
    reports = []
    assert store.newest_good(report=reports.append) == 1
    assert len(reports) == 1 and "step-00000002 is damaged" in reports[0]
    if damage == "flip":  # same size: only the checksum sees it
        assert store.problems(2, checksums=False) == []


def test_retention_keeps_the_last_k_and_every_nth(tmp_path):
    store = CheckpointStore(tmp_path)
    for step in range(100, 1100, 100):
        _commit(store, step)
    deleted = store.prune(keep_last=2, keep_every=500, protect=300)
    assert store.steps() == [300, 500, 900, 1000]
    assert deleted == [100, 200, 400, 600, 700, 800]


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_dcp_metadata_reader_refuses_foreign_globals():
    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        _MetadataUnpickler(io.BytesIO(pickle.dumps(_Evil()))).load()


def test_deepspeed_loads_are_forced_weights_only(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": _Evil()}, path)
    with weights_only_torch_load(), pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=False)  # what DeepSpeed asks for; refused inside
    torch.save({"x": torch.ones(2)}, path)
    with weights_only_torch_load():
        assert torch.equal(torch.load(path, weights_only=False)["x"], torch.ones(2))


def _tiny_export(tmp_path, **model):
    cfg = TrainConfig(model=ModelConfig(num_layers=1, hidden_size=32, ffn_hidden_size=64, num_heads=2,
                                        max_seq_len=16, **model))
    torch.manual_seed(0)
    model = Transformer(cfg.model)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return model, save_export(tmp_path / "export", model.state_dict(), cfg, step=7)


@pytest.mark.parametrize("model", [{}, {"position": "rotary", "tie_embeddings": False}])
def test_export_round_trip(tmp_path, model):
    original, out = _tiny_export(tmp_path, **model)
    loaded = load_exported(out)
    ids = torch.randint(5, 69, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids), original(ids), rtol=0, atol=0)
    assert loaded.step == 7 and loaded.tree.kind == "helm" and len(loaded.vocab) == 69
    with pytest.raises(FileExistsError):
        save_export(out, original.state_dict(), loaded.config, step=7)


def test_export_refuses_a_modified_file(tmp_path):
    _, out = _tiny_export(tmp_path)
    with open(out / "model.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x00\x80\x7f")
    with pytest.raises(ValueError, match="sha256"):
        load_exported(out)


def test_each_engine_says_which_layout_changes_its_state_survives():
    from helm_scale.parallel.backends import engine_class
    ddp, deepspeed = engine_class("ddp"), engine_class("deepspeed")

    def layout(backend="deepspeed", dp=2, tp=1, zero_stage=2, precision="fp32"):
        return dict(world_size=dp * tp, dp=dp, tp=tp, backend=backend, zero_stage=zero_stage, precision=precision)

    assert ddp.resume_route(layout("ddp", zero_stage=0), layout("ddp", dp=1, tp=2, zero_stage=0)) is False
    assert deepspeed.resume_route(layout(), layout(dp=1)) is True  # ZeRO 1-3: the universal form
    assert deepspeed.resume_route(layout(zero_stage=0), layout(dp=1, zero_stage=0)) is False
    assert deepspeed.resume_route(layout(), layout()) is False
    with pytest.raises(ValueError, match="resume with parallel.zero_stage=2"):
        deepspeed.resume_route(layout(), layout(zero_stage=3))
    with pytest.raises(ValueError, match="tensor_parallel=1 at tensor_parallel=2.*parallel.backend=ddp"):
        deepspeed.resume_route(layout(), layout(dp=1, tp=2))
    with pytest.raises(ValueError, match="unknown parallel backend 'mars'"):
        engine_class("mars")
