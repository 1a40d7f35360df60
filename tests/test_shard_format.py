"""Shard format 3: chunks of sequences per tar member, read back whole and exactly; chunk
boundaries; damaged members caught by verify and by the loader; formats 1 and 2 refused;
and the loader's stream identical to the one the format-1 code produced."""
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import zstandard
from wids.wids import IndexedTarSamples

from data_prep.prep import PrepConfig, SplitPolicy, run_prep
from data_prep.synth import generate, write_fasta
from data_prep.verify import verify
from helm_scale.data import LoaderConfig, build_loader
from helm_scale.data.reader import SplitReader
from helm_scale.evaluate.sequences import EvalInputError, read_sequences
from helm_scale.shard_format import ShardError, read_manifest
from tests.loader_stream import fingerprints
from tests.prep_reference import read_dataset

GOLDEN = Path(__file__).parent / "golden" / "loader_stream_v1.json"


def _prep(tmp_path: Path, name: str, chunk_bytes: int, shard_bytes: int = 12 << 10, records: int = 300,
          **kw) -> Path:
    fasta = tmp_path / f"corpus-{records}.fa"
    if not fasta.exists():
        write_fasta(fasta, generate(records, seed=5, median_codons=40, min_codons=10, max_codons=200))
    out = tmp_path / name
    run_prep(PrepConfig(inputs=[str(fasta)], output=str(out), chunk_bytes=chunk_bytes, shard_bytes=shard_bytes,
                        workers=1, progress=False, split=SplitPolicy(val_fraction=0.05, test_fraction=0.05), **kw))
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return _prep(tmp_path_factory.mktemp("fmt2"), "ds", chunk_bytes=1500)


def _chunks(root: Path, split: str) -> list[list[int]]:
    return [c for s in read_manifest(root)["splits"][split]["shards"] for c in s["chunks"]]


def test_every_sample_round_trips_through_the_reader(dataset):
    truth = read_dataset(dataset)  # tar members decoded by hand, no shared code
    fasta = read_manifest(dataset)["inputs"][0]["path"]
    header_line = {line[1:].split()[0]: n for n, line in enumerate(open(fasta), 1) if line.startswith(">")}
    assert all(m["line"] == header_line[m["id"]] and m["source"] == fasta
               for rows in truth.values() for _, m in rows)
    for split, rows in truth.items():
        if not rows:
            continue
        reader = SplitReader(dataset, split, cache_chunks=2)
        assert reader.num_samples == len(rows)
        for i, (tokens, _) in enumerate(rows):
            assert reader.tokens(i).tolist() == tokens
        meta = [m for c in range(reader.num_chunks) for m in reader.metadata(c)]
        assert meta == [m for _, m in rows] and all(m["id"].startswith("synth_") for m in meta)
        shuffled = np.random.default_rng(0).permutation(len(rows))
        assert [t.tolist() for t in reader.tokens_of(shuffled)] == [rows[i][0] for i in shuffled]
        assert reader.codon_lengths().tolist() == [len(t) for t, _ in rows]
        reader.close()
    assert verify(dataset) == []


def test_chunks_are_cut_at_the_target_and_the_last_one_is_short(dataset):
    reader = SplitReader(dataset, "train")
    lengths = reader.codon_lengths()
    chunks = _chunks(dataset, "train")
    assert len(chunks) >= 6
    start = 0
    for k, (samples, tokens) in enumerate(chunks):
        assert tokens == lengths[start:start + samples].sum()
        if k < len(chunks) - 1:  # cut at the first sequence that reaches the target
            assert tokens >= 1500 > tokens - lengths[start + samples - 1]
        else:
            assert 0 < tokens < 1500
        start += samples
    manifest = read_manifest(dataset)
    shards = manifest["splits"]["train"]["shards"]
    firsts = np.cumsum([0] + [s["samples"] for s in shards])[:-1]
    assert [s["first_key"] for s in shards] == [f"{i:010d}" for i in firsts]
    for shard in shards:  # plain tars: wids indexes them, one sample per chunk, keyed by its first index
        tar = IndexedTarSamples(path=str(dataset / shard["path"]), expected_size=len(shard["chunks"]))
        assert tar[0]["__key__"] == shard["first_key"]
        assert set(tar[0]) == {"__key__", ".chunk.zst"}
        tar.close()


def test_a_sequence_alone_in_each_chunk_and_a_split_smaller_than_one_chunk(tmp_path):
    alone = _prep(tmp_path, "alone", chunk_bytes=1, records=80)
    for split in ("train", "val"):
        assert {samples for samples, _ in _chunks(alone, split)} == {1}
    whole = _prep(tmp_path, "whole", chunk_bytes=1 << 20, shard_bytes=1 << 30, records=80)
    for split in ("train", "val"):
        chunks = _chunks(whole, split)
        assert len(chunks) == 1 and chunks[0][0] == read_manifest(whole)["splits"][split]["samples"]
    for root in (alone, whole):
        assert verify(root) == []
    for split in ("train", "val", "test"):
        assert read_dataset(alone)[split] == read_dataset(whole)[split]
    a, w = SplitReader(alone, "val"), SplitReader(whole, "val")
    assert [a.tokens(i).tolist() for i in range(a.num_samples)] == \
        [w.tokens(i).tolist() for i in range(w.num_samples)]


def _rewrite_member(shard: Path, suffix: str, edit, chunk: int = 1) -> None:
    """Replace one member (the ``chunk``-th with this suffix) by ``edit(decompressed)``."""
    members = []
    with tarfile.open(shard) as tar:
        for info in tar.getmembers():
            members.append((info, tar.extractfile(info).read()))
    hits = [k for k, (info, _) in enumerate(members) if info.name.endswith(suffix)]
    info, data = members[hits[chunk]]
    members[hits[chunk]] = (info, edit(data))
    with tarfile.open(shard, "w") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _frames(member: bytes) -> tuple[bytes, bytes]:
    """A chunk member's two frames, decompressed: meta, tokens."""
    first = zstandard.ZstdDecompressor().decompressobj()
    meta = first.decompress(member)
    return meta, zstandard.ZstdDecompressor().decompress(first.unused_data)


def _edit(frame: int, fn):
    """Rewrite one frame (0 meta, 1 tokens) of a chunk member by ``fn(decompressed)``."""
    def edit(member: bytes) -> bytes:
        frames = list(_frames(member))
        frames[frame] = fn(frames[frame])
        return b"".join(zstandard.ZstdCompressor().compress(f) for f in frames)
    return edit


def _bump_first_length(raw: bytes) -> bytes:
    """Lengths are the meta frame's first column: add 1 to the low byte of the first."""
    size = int.from_bytes(raw[:4], "little")
    assert json.loads(raw[4:4 + size])["columns"][0][0] == "lengths"
    data = bytearray(raw)
    data[4 + size] += 1
    return bytes(data)


def _flip_in(frame: int):
    """Flip a byte in the middle of one compressed frame."""
    def edit(member: bytes) -> bytes:
        first = zstandard.ZstdDecompressor().decompressobj()
        first.decompress(member)
        cut = len(member) - len(first.unused_data)
        lo, hi = (0, cut) if frame == 0 else (cut, len(member))
        data = bytearray(member)
        data[(lo + hi) // 2] ^= 0x55
        return bytes(data)
    return edit


DAMAGE = {  # what is done to chunk 1 of the first train shard -> the message that names it
    "tokens bytes flipped": (_flip_in(1), "tokens frame does not decompress"),
    "meta bytes flipped": (_flip_in(0), "meta frame does not decompress"),
    "lengths sum off by one": (_edit(0, _bump_first_length), "lengths sum to"),
    "a token short": (_edit(1, lambda raw: raw[:-1]), "lengths sum to"),
    "meta column cut short": (_edit(0, lambda raw: raw[:-1]), "meta frame"),
    "meta header not json": (_edit(0, lambda raw: raw[:4] + b"[" + raw[5:]), "not the columns of format 3"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_members_are_named_by_verify_and_by_the_loader(dataset, tmp_path, damage):
    import shutil
    root = tmp_path / "ds"
    shutil.copytree(dataset, root)
    edit, message = DAMAGE[damage]
    shard = read_manifest(root)["splits"]["train"]["shards"][0]["path"]
    _rewrite_member(root / shard, ".chunk.zst", edit)
    problems = "\n".join(verify(root))
    assert f"{shard} chunk 1" in problems and message in problems, problems
    cfg = dict(dataset_dir=str(root), seq_len=128, micro_batch_size=8, num_workers=0, shuffle=False)
    with pytest.raises(ShardError, match=f"{shard} chunk 1 .*{message}"):
        list(build_loader(LoaderConfig(**cfg)))
    if "tokens" not in damage and "a token" not in damage:  # packing reads every meta frame at start-up
        with pytest.raises(ShardError, match=message):
            build_loader(LoaderConfig(**cfg, pack=True))


@pytest.mark.parametrize("old", ["helm-scale-shards/1", "helm-scale-shards/2"])
def test_older_formats_are_refused_with_the_command_that_rebuilds_them(dataset, tmp_path, capsys, old):
    import shutil

    from helm_scale.cli import main
    root = tmp_path / "old"
    shutil.copytree(dataset, root)
    manifest = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps({**manifest, "format": old}))
    rebuild = f"helm-scale prep {manifest['inputs'][0]['path']} -o {root} --overwrite"
    with pytest.raises(ValueError) as e:
        build_loader(LoaderConfig(str(root), num_workers=0))
    assert old in str(e.value) and rebuild in str(e.value)
    with pytest.raises(EvalInputError, match="--overwrite"):
        read_sequences(root, "val")
    assert main(["verify", str(root), "--quiet"]) == 2
    assert rebuild in capsys.readouterr().err
    tiny = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")
    assert main(["train", tiny, f"data.dataset_dir={root}", f"run.run_dir={tmp_path / 'run'}"]) == 2
    assert rebuild in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_the_loader_stream_is_the_one_format_1_produced():
    """Same corpus, same seed: the same batches, bit for bit (padded, packed, MLM masks,
    two DP sizes, two epochs), and the same multi-shard global orders, as recorded from
    the format-1 code before this format existed (see tests/loader_stream.py)."""
    assert fingerprints() == json.loads(GOLDEN.read_text())


ODD_IDS = ["", "a", "007", "0", "00", "x0", "seq12", "seq13", "seq11", "ü12", "日本語", "a\nb5", "tab\t9",
           "123456789012345678901234",  # longer than the 18-digit suffix: the rest stays in the prefix
           "9" * 18, "9" * 19, "-5", "x" + "0" * 25, "run:SRR1298732.1", "run:SRR1298732.9", "other|77",
           "run:SRR1298732.10", "1e5", "12 34"]


@pytest.mark.parametrize("groups", ["none", "some", "all"])
def test_meta_columns_round_trip_ids_that_do_not_fit_the_prefix_and_counter_pattern(groups):
    from helm_scale.shard_format import CHUNK_MEMBER, decode_chunk, decode_meta, encode_chunk
    from tests.prep_reference import read_meta
    rng = np.random.default_rng(4)
    ids = ODD_IDS + [f"p{rng.integers(3)}_{rng.integers(10 ** rng.integers(1, 18))}" for _ in range(200)]
    n = len(ids)
    group = {"none": None, "some": [None if i % 3 else f"gene{i % 7:04d}" for i in range(n)],
             "all": [ids[(i * 7) % n] for i in range(n)]}[groups]
    lengths = rng.integers(0, 600, size=n)
    tokens = rng.integers(5, 69, size=int(lengths.sum())).astype(np.uint8)
    lines = np.cumsum(rng.integers(-50, 10 ** 9, size=n))  # sources restart: lines may fall
    sample = encode_chunk(12, tokens, lengths, ids, lines, group, [["a.fa", 5], ["b.csv", n - 5]],
                          zstandard.ZstdCompressor(level=7, write_checksum=True))
    expected = [{"id": i, "source": "a.fa" if k < 5 else "b.csv", "line": int(line),
                 "group": None if group is None else group[k]} for k, (i, line) in enumerate(zip(ids, lines))]
    assert decode_meta(sample, n, "here") == expected
    frames = zstandard.ZstdDecompressor().decompressobj()
    naive_lengths, naive_meta = read_meta(frames.decompress(sample[CHUNK_MEMBER]))  # no shared code
    assert naive_meta == expected and naive_lengths == lengths.tolist()
    chunk = decode_chunk(sample, "uint8", n, 12, "here")
    assert chunk.tokens.tobytes() == tokens.tobytes() and np.diff(chunk.offsets).tolist() == lengths.tolist()
    with pytest.raises(ShardError, match="here: meta column lengths holds"):
        decode_chunk(sample, "uint8", n + 1, 12, "here")
