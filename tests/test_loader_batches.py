"""Single-process loader checks on a real prepared dataset: batch contents, packing
boundaries, masking, truncation, refusals, and resume (workers in the slow ones)."""
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from helm_scale.codon import Vocabulary
from helm_scale.data import IGNORE_INDEX, LoaderConfig, block_attention_mask, build_loader
from helm_scale.shard_format import read_manifest
from tests.corpora import SHARED_DATA, reference_tokens

VOCAB = Vocabulary.default()


def _cfg(dataset, **kw):
    base = dict(dataset_dir=str(dataset), seq_len=128, micro_batch_size=8, num_workers=0,
                shuffle_window=100, seed=11)
    return LoaderConfig(**{**base, **kw})


def test_the_fixture_has_several_uneven_shards(small_dataset):
    """Uneven shards of several chunks: what several tests here rely on."""
    shards = read_manifest(small_dataset)["splits"]["train"]["shards"]
    sizes = [s["samples"] for s in shards]
    assert len(sizes) >= 3 and len(set(sizes)) > 1
    assert all(len(s["chunks"]) >= 2 for s in shards[:-1])
    assert len(reference_tokens(small_dataset)) == sum(sizes)


def _epoch(loader):
    return list(loader)


def _expected(codons, seq_len=128):
    """What the loader must make of a sample: <cls> codons <eos>, or cut with no <eos>."""
    codons = codons.tolist()
    if len(codons) + 2 <= seq_len:
        return [VOCAB.cls_id, *codons, VOCAB.eos_id]
    return [VOCAB.cls_id, *codons[:seq_len - 1]]


def _segments(batch, r):
    """(sample index, slice) of each sequence in row r."""
    seg, sid = batch["segment_ids"][r], batch["sample_ids"][r]
    out = []
    for k in range(1, int(seg.max()) + 1):
        where = torch.nonzero(seg == k).flatten()
        out.append((int(sid[where[0]]), slice(int(where[0]), int(where[-1]) + 1)))
    return out


@pytest.mark.parametrize("pack", [False, True])
def test_clm_batches_hold_the_stored_tokens_with_shifted_labels_inside_sequences(small_dataset, pack):
    truth = reference_tokens(small_dataset)
    batches = _epoch(build_loader(_cfg(small_dataset, pack=pack)))
    seen = []
    for b in batches:
        ids, labels, seg = b["input_ids"], b["labels"], b["segment_ids"]
        assert ids.shape == (8, 128) and ids.dtype == torch.int64 and b["loss_mask"].dtype == torch.bool
        assert torch.equal(b["loss_mask"], labels != IGNORE_INDEX)
        assert (ids[seg == 0] == VOCAB.pad_id).all() and not b["loss_mask"][seg == 0].any()
        for r in range(ids.shape[0]):
            for sample, span in _segments(b, r):
                seen.append(sample)
                expected = _expected(truth[sample])
                assert ids[r, span].tolist() == expected
                assert b["position_ids"][r, span].tolist() == list(range(len(expected)))
                assert labels[r, span].tolist() == expected[1:] + [IGNORE_INDEX]
        # a target never comes from another sequence: position t's label is token t+1 of the same segment
        t = torch.nonzero(b["loss_mask"])
        assert (seg[t[:, 0], t[:, 1] + 1] == seg[t[:, 0], t[:, 1]]).all()
    assert len(seen) == len(set(seen))
    assert any(len(truth[i]) + 2 > 128 for i in seen)  # cut sequences were among them
    if pack:
        assert max(int(b["segment_ids"].max()) for b in batches) >= 2
    else:
        assert len(seen) == len(truth) // 8 * 8


@pytest.mark.parametrize("objective,pack", [("clm", False), ("mlm", False), ("clm", True)])
def test_pad_to_multiple_of_cuts_only_padding_columns(small_dataset, objective, pack):
    # 4 rows a batch: packed rows are mostly near full, so 8 would rarely leave a batch short
    kw = dict(objective=objective, pack=pack, seq_len=160, micro_batch_size=4)
    full = _epoch(build_loader(_cfg(small_dataset, **kw)))
    cut = _epoch(build_loader(_cfg(small_dataset, **kw, pad_to_multiple_of=24)))
    assert len(cut) == len(full)
    widths = set()
    for f, c in zip(full, cut):
        width = c["input_ids"].shape[1]
        longest = int((f["segment_ids"] > 0).sum(1).max())
        assert width == min(160, -(-longest // 24) * 24) and width >= longest
        widths.add(width)
        assert (f["segment_ids"][:, width:] == 0).all()
        for key in f:
            assert torch.equal(c[key], f[key][:, :width]), key  # masks too: keyed by position
    assert len(widths) > 1 and min(widths) < 160  # the fixture's lengths vary: so do the widths


def test_pad_to_multiple_of_refuses_a_negative_multiple(small_dataset):
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        _cfg(small_dataset, pad_to_multiple_of=-8)


def test_block_attention_mask_never_crosses_a_packed_boundary(small_dataset):
    batch = next(iter(build_loader(_cfg(small_dataset, pack=True))))
    seg = batch["segment_ids"]
    for causal in (True, False):
        mask = block_attention_mask(seg, causal)[:, 0]
        i, j = torch.meshgrid(torch.arange(128), torch.arange(128), indexing="ij")
        same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] > 0)
        assert torch.equal(mask, same & (j <= i) if causal else same)
        assert not mask[seg == 0].any()
    # and a causal model fed it sees each sequence as if alone: the first token of a
    # second sequence attends only to itself
    r = int(torch.nonzero(seg.max(dim=1).values >= 2)[0])
    first_of_second = int(torch.nonzero(seg[r] == 2)[0])
    assert torch.nonzero(block_attention_mask(seg, True)[r, 0, first_of_second]).flatten().tolist() == [first_of_second]


def test_long_sequences_are_cut_without_an_eos(small_dataset):
    truth = reference_tokens(small_dataset)
    batch = next(iter(build_loader(_cfg(small_dataset, seq_len=32))))
    for r in range(8):
        sample = int(batch["sample_ids"][r, 0])
        codons = truth[sample].tolist()
        row = batch["input_ids"][r].tolist()
        if len(codons) + 2 > 32:
            assert row == [VOCAB.cls_id, *codons[:31]] and VOCAB.eos_id not in row
            assert batch["labels"][r, -1] == IGNORE_INDEX


def test_mlm_masks_fifteen_percent_of_codons_all_to_mask(small_dataset):
    batches = _epoch(build_loader(_cfg(small_dataset, objective="mlm", pack=True)))
    truth = reference_tokens(small_dataset)
    selected = candidates = 0
    for b in batches:
        ids, labels = b["input_ids"], b["labels"]
        target = labels != IGNORE_INDEX
        assert (ids[target] == VOCAB.mask_id).all() and (ids == VOCAB.mask_id).sum() == target.sum()
        original = torch.where(target, labels, ids)
        assert not any(torch.isin(original[target], torch.tensor(VOCAB.special_ids)).tolist())
        for r in range(ids.shape[0]):
            for sample, span in _segments(b, r):
                assert original[r, span].tolist() == _expected(truth[sample])
        codon = ~torch.isin(original, torch.tensor(VOCAB.special_ids))
        selected, candidates = selected + int(target.sum()), candidates + int(codon.sum())
    rate, sd = selected / candidates, (0.15 * 0.85 / candidates) ** 0.5
    assert abs(rate - 0.15) < 5 * sd, rate


def test_mlm_80_10_10_and_masks_depend_on_the_epoch(small_dataset):
    loader = build_loader(_cfg(small_dataset, objective="mlm", mask_replace_ratios=(0.8, 0.1, 0.1)))
    epoch0, epoch1 = _epoch(loader), _epoch(loader)
    counts = np.zeros(3)
    for b in epoch0:
        target = b["labels"] != IGNORE_INDEX
        shown, truth = b["input_ids"][target], b["labels"][target]
        counts += [int((shown == VOCAB.mask_id).sum()), int(((shown != VOCAB.mask_id) & (shown != truth)).sum()),
                   int((shown == truth).sum())]
        assert not torch.isin(shown, torch.tensor([VOCAB.pad_id, VOCAB.cls_id, VOCAB.eos_id])).any()
    share = counts / counts.sum()
    # random codons equal to the original (1 in 64) count as kept: allow for it
    assert abs(share[0] - 0.8) < 0.03 and abs(share[1] - 0.1) < 0.03 and abs(share[2] - 0.1) < 0.03, share
    assert not all(torch.equal(a["sample_ids"], b["sample_ids"]) for a, b in zip(epoch0, epoch1))


@pytest.mark.parametrize("objective,pack", [("mlm", True), ("clm", False)])
def test_resume_mid_epoch_and_across_the_epoch_end_is_bit_exact(small_dataset, objective, pack):
    cfg = _cfg(small_dataset, objective=objective, pack=pack)
    reference = build_loader(cfg)
    full = _epoch(reference) + _epoch(reference)
    per_epoch = len(full) // 2
    for stop in (3, per_epoch, per_epoch + 2):
        first = build_loader(cfg)
        got, state = [], None
        while len(got) < stop:
            for batch in first:
                got.append(batch)
                if len(got) == stop:
                    state = first.state_dict()
                    break
        resumed = build_loader(cfg)
        resumed.load_state_dict(state)
        while len(got) < len(full):
            got.extend(resumed)
        assert all(torch.equal(a[k], b[k]) for a, b in zip(got, full) for k in a)


def test_refuses_other_vocabulary_and_incompatible_state(small_dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(small_dataset, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["vocabulary"]["tokens"] = manifest["vocabulary"]["tokens"][::-1]
    manifest["vocabulary_fingerprint"] = Vocabulary.from_dict(manifest["vocabulary"]).fingerprint
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="another token order"):
        build_loader(_cfg(copy))
    with pytest.raises(ValueError, match="split 'test'"):
        build_loader(_cfg(small_dataset, split="test"))
    with pytest.raises(ValueError, match="fewer than one global batch"):
        build_loader(_cfg(small_dataset, split="val", micro_batch_size=64))
    state = build_loader(_cfg(small_dataset)).state_dict()
    with pytest.raises(ValueError, match="seed"):
        build_loader(_cfg(small_dataset, seed=12)).load_state_dict(state)
    with pytest.raises(ValueError, match="pack"):
        build_loader(_cfg(small_dataset, pack=True)).load_state_dict(state)
    with pytest.raises(ValueError, match="rows"):
        build_loader(_cfg(small_dataset)).load_state_dict({**state, "rows_consumed": 10**6})


@pytest.mark.slow
def test_the_stream_is_the_same_with_zero_one_and_two_workers(small_dataset):
    streams = []
    for workers in (0, 1, 2):
        loader = build_loader(_cfg(small_dataset, objective="mlm", pack=True, num_workers=workers))
        streams.append(_epoch(loader) + _epoch(loader))
    for other in streams[1:]:
        assert len(other) == len(streams[0])
        assert all(torch.equal(a[k], b[k]) for a, b in zip(streams[0], other) for k in a)


@pytest.mark.slow
def test_real_antibody_corpus_is_read_whole_and_exactly(tmp_path):
    corpus = SHARED_DATA / "corpus" / "antibody_heavy_chains.fasta.gz"
    if not corpus.is_file():
        pytest.skip(f"{corpus} absent: real-data check needs ../shared/data")
    from data_prep.policy import RecordPolicy
    from data_prep.prep import PrepConfig, SplitPolicy, run_prep
    out = tmp_path / "antibody"
    run_prep(PrepConfig(inputs=[str(corpus)], output=str(out), shard_bytes=1 << 20, workers=1,
                        progress=False, policy=RecordPolicy(frame="trim"),
                        split=SplitPolicy(val_fraction=0.01, test_fraction=0.01)))
    truth = reference_tokens(out)
    loader = build_loader(LoaderConfig(str(out), objective="clm", pack=True, micro_batch_size=32,
                                       num_workers=0))
    seen = 0
    for b in loader:
        for r in range(b["input_ids"].shape[0]):
            for sample, span in _segments(b, r):
                assert b["input_ids"][r, span].tolist() == _expected(truth[sample], 444)
                seen += 1
    assert len(truth) - 32 * 10 < seen <= len(truth)  # all but the dropped last rows


@pytest.mark.parametrize("seq_len", [64, 40_000])  # 2-byte fields; 4-byte once they overflow
@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_the_compact_block_workers_send_unpacks_to_the_same_batch(seq_len, objective):
    from helm_scale.data.batches import Collator, unpack_batch
    rng = np.random.default_rng(seq_len)
    row_sizes = np.array([1, 3, 1, 2, 5])
    room = seq_len // 5 - 2  # five sequences with their specials fit in a row
    codons = [rng.integers(5, 69, size=rng.integers(1, room)).astype(np.uint8) for _ in range(row_sizes.sum())]
    codons[0] = rng.integers(5, 69, size=seq_len + 7).astype(np.uint8)  # alone in its row, cut
    samples = rng.integers(0, 10**12, size=row_sizes.sum())
    batches = [unpack_batch(Collator(VOCAB, seq_len, objective, seed=3, compact=compact)(samples, codons, row_sizes, 2))
               for compact in (False, True)]
    for key in batches[0]:
        assert batches[0][key].dtype == batches[1][key].dtype and torch.equal(batches[0][key], batches[1][key]), key
    assert int(batches[1]["segment_ids"][4].max()) == 5 and batches[1]["sample_ids"][0, 0] == samples[0]
    assert batches[1]["sample_ids"][2, -1] == -1 and batches[1]["input_ids"][0, -1] != VOCAB.eos_id


def test_length_buckets_group_similar_lengths_and_resume_exactly(small_dataset):
    """Off by default (the golden order); on, each run of k rows in a window holds
    similar lengths, runs come in a seeded random order, and resume is bit-exact."""
    cfg = _cfg(small_dataset, pad_to_multiple_of=8, length_bucket=8, shuffle_window=64)
    plain = build_loader(_cfg(small_dataset, pad_to_multiple_of=8, shuffle_window=64))
    reference = build_loader(cfg)
    full = _epoch(reference) + _epoch(reference)
    again = build_loader(cfg)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(full, _epoch(again) + _epoch(again)) for k in a)

    def spread(batches):  # mean (longest - shortest) real length within a batch
        real = [(b["segment_ids"] > 0).sum(1).float() for b in batches]
        return float(np.mean([float(r.max() - r.min()) for r in real]))
    plain_epoch = _epoch(plain)
    assert spread(full) < 0.5 * spread(plain_epoch)
    assert sum(b["input_ids"].shape[1] for b in full[:len(plain_epoch)]) < sum(b["input_ids"].shape[1] for b in plain_epoch)
    seen = sorted(int(s) for b in full[:len(full) // 2] for s in b["sample_ids"][:, 0])
    assert len(seen) == len(set(seen))  # still each sample at most once an epoch
    assert not all(torch.equal(a["sample_ids"], b["sample_ids"]) for a, b in zip(full, full[len(full) // 2:]))
    half = len(full) // 2
    for stop in (3, half + 1):  # mid-epoch, and into the second epoch; at half the batch size
        first, got = build_loader(cfg), 0
        while got < stop:
            for _ in first:
                got += 1
                if got == stop:
                    break
        resumed = build_loader(dataclasses.replace(cfg, micro_batch_size=4))
        resumed.load_state_dict(first.state_dict())
        rows = [r for b in resumed for r in b["sample_ids"][:, 0].tolist()]
        expect = [r for b in full[stop:half if stop < half else len(full)] for r in b["sample_ids"][:, 0].tolist()]
        assert rows[:len(expect)] == expect and len(rows) - len(expect) < 8  # 4-row steps may take one more
    with pytest.raises(ValueError, match="length_bucket"):
        _cfg(small_dataset, pack=True, length_bucket=8)
    state = build_loader(_cfg(small_dataset)).state_dict()
    with pytest.raises(ValueError, match="length_bucket"):
        reference.load_state_dict(state)


def test_the_loader_is_built_from_a_jobs_data_section():
    """LoaderConfig.from_data takes every setting it shares with DataConfig (each set here
    away from its default, so a missed one shows), the two default alike, a bad
    data.length_bucket is refused when the YAML loads, and evaluation reads in order."""
    from helm_scale.config_io import ConfigError
    from helm_scale.data import DataConfig
    from helm_scale.data.loader import _shared_fields
    from helm_scale.train_config import load_train_config
    data = load_train_config(None, [
        "data.dataset_dir=d", "data.objective=mlm", "data.seq_len=128", "data.micro_batch_size=3",
        "data.pack=false", "data.pad_to_multiple_of=8", "data.length_bucket=6", "data.shuffle_window=99",
        "data.mask_prob=0.2", "data.mask_replace_ratios=[0.8, 0.1, 0.1]", "data.num_workers=0"]).data
    assert set(_shared_fields()) >= {"dataset_dir", "objective", "seq_len", "micro_batch_size", "pack",
                                     "pad_to_multiple_of", "length_bucket", "shuffle_window", "mask_prob",
                                     "mask_replace_ratios", "num_workers"}
    cfg, defaults, bare = LoaderConfig.from_data(data, 7, split="val"), DataConfig(), LoaderConfig("d")

    def value(c, name):
        v = getattr(c, name)
        return tuple(v) if isinstance(v, list) else v
    for name in _shared_fields():
        assert value(cfg, name) == value(data, name)
        assert name == "pack" or value(data, name) != value(defaults, name)
        assert value(bare, name) == value(defaults, name) or name == "dataset_dir"  # one source of defaults
    assert cfg.mask_replace_ratios == (0.8, 0.1, 0.1) and (cfg.split, cfg.seed) == ("val", 7)
    ev = cfg.for_evaluation("test")
    assert (ev.split, ev.shuffle, ev.length_bucket, ev.num_workers) == ("test", False, 0, 0)
    assert (ev.micro_batch_size, ev.pad_to_multiple_of, ev.seed) == (3, 8, 7)
    with pytest.raises(ConfigError, match="length_bucket"):
        load_train_config(None, ["data.pack=true", "data.length_bucket=8"])
