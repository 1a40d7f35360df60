import gzip
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from data_prep.prep import PrepConfig, SplitPolicy, run_prep
from data_prep.policy import RecordPolicy
from data_prep.readers import InputError, InputSpec
from data_prep.synth import generate, write_fasta
from data_prep.verify import verify
from helm_scale.durable import temp_path
from tests.prep_reference import expected_outcome, read_dataset, read_fasta

SHARD_BYTES = 6_000  # small, so a few hundred records make several shards ...
CHUNK_BYTES = 2_000  # ... of several chunks each


def _cfg(inputs, out, **kw):
    kw.setdefault("shard_bytes", SHARD_BYTES)
    kw.setdefault("chunk_bytes", CHUNK_BYTES)
    kw.setdefault("workers", 1)
    kw.setdefault("split", SplitPolicy(val_fraction=0.1, test_fraction=0.1))
    return PrepConfig(inputs=[str(i) for i in inputs], output=str(out), progress=False, **kw)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "synth.fa.gz"
    write_fasta(path, generate(400, seed=7, median_codons=60, min_codons=5, max_codons=200,
                               defect_rate=0.3))
    return path


def test_round_trip_and_accounting_match_an_independent_reference(corpus, tmp_path):
    manifest = run_prep(_cfg([corpus], tmp_path / "ds"))
    records = read_fasta(corpus)
    expected, reasons, seen, duplicates = {}, Counter(), set(), 0
    for rid, seq in records:
        reason, tokens = expected_outcome(seq)
        if reason:
            reasons[reason] += 1
        elif tuple(tokens) in seen:
            duplicates += 1
        else:
            seen.add(tuple(tokens))
            expected[rid] = tokens
    assert len(reasons) >= 3 and duplicates > 0  # the corpus exercises the policy

    got = {meta["id"]: (tokens, name) for name, rows in read_dataset(tmp_path / "ds").items()
           for tokens, meta in rows}
    assert {rid: t for rid, (t, _) in got.items()} == expected
    item = manifest["inputs"][0]
    assert item["records"] == len(records) == item["kept"] + item["duplicates"] + sum(item["rejected"].values())
    assert item["rejected"] == dict(reasons) and item["duplicates"] == duplicates
    assert manifest["totals"]["kept"] == len(expected)
    split_of = {rid: name for rid, (_, name) in got.items()}
    assert all(split_of[rid] == name for name in ("train", "val", "test")
               for rid in split_of if split_of[rid] == name)
    assert len(manifest["splits"]["train"]["shards"]) > 1 and verify(tmp_path / "ds") == []
    rejects = [json.loads(line) for line in open(tmp_path / "ds" / "rejects.jsonl")]
    assert Counter(r["reason"] for r in rejects) == {r: min(n, 20) for r, n in reasons.items()}
    assert manifest["vocabulary_fingerprint"] and manifest["tree"]["kind"] == "helm"


def test_shards_are_byte_identical_for_one_and_two_workers(corpus, tmp_path):
    one = run_prep(_cfg([corpus], tmp_path / "w1", workers=1, batch_bytes=3_000))
    two = run_prep(_cfg([corpus], tmp_path / "w2", workers=2, batch_bytes=5_000))
    one.pop("run"), two.pop("run")
    assert json.dumps(one, sort_keys=True).replace("w1", "w2") == json.dumps(two, sort_keys=True)
    for shard in (s for split in one["splits"].values() for s in split["shards"]):
        assert (tmp_path / "w1" / shard["path"]).read_bytes() == (tmp_path / "w2" / shard["path"]).read_bytes()


def test_splits_do_not_depend_on_input_order_or_file_layout(corpus, tmp_path):
    records = read_fasta(corpus)
    random.Random(0).shuffle(records)
    half = len(records) // 2
    (tmp_path / "in").mkdir()
    for name, part in (("b.fa", records[:half]), ("a.fa", records[half:])):
        write_fasta(tmp_path / "in" / name, part)
    run_prep(_cfg([corpus], tmp_path / "orig"))
    run_prep(_cfg([tmp_path / "in"], tmp_path / "shuffled"))
    split_of = lambda root: {tuple(t): n for n, rows in read_dataset(root).items() for t, _ in rows}
    assert split_of(tmp_path / "orig") == split_of(tmp_path / "shuffled")


def test_split_by_group_keeps_each_group_in_one_split(tmp_path):
    fasta = tmp_path / "g.fa"
    recs = [(f"gene{i % 40}|copy{i} ", seq) for i, (_, seq) in enumerate(generate(400, seed=3, median_codons=40, min_codons=12, defect_rate=0))]
    write_fasta(fasta, recs)
    run_prep(_cfg([fasta], tmp_path / "ds", split=SplitPolicy(by="group", val_fraction=0.2, test_fraction=0.2),
                  input_spec=InputSpec(group_regex=r"^(gene\d+)\|")))
    splits_of_group = {}
    for name, rows in read_dataset(tmp_path / "ds").items():
        for _, meta in rows:
            splits_of_group.setdefault(meta["group"], set()).add(name)
    assert len(splits_of_group) == 40 and all(len(s) == 1 for s in splits_of_group.values())
    assert {n for s in splits_of_group.values() for n in s} == {"train", "val", "test"}


def test_tabular_oas_lines_and_zstd_inputs(tmp_path):
    import zstandard
    seqs = [s for _, s in generate(30, seed=11, median_codons=40, min_codons=12, defect_rate=0)]
    (tmp_path / "t.csv").write_text("id,cds,clone\n" + "".join(f"r{i},{s},c{i % 3}\n" for i, s in enumerate(seqs[:10])))
    (tmp_path / "t.tsv").write_text("id\tcds\n" + "".join(f"q{i}\t{s}\n" for i, s in enumerate(seqs[10:20])))
    meta = '"{""Run"": ""SRR0"", ""Species"": ""human""}"\n'
    with gzip.open(tmp_path / "unit.csv.gz", "wt") as f:
        f.write(meta + "sequence_id,sequence_alignment\n" + "".join(f"o{i},{s}\n" for i, s in enumerate(seqs[20:25])))
    (tmp_path / "plain.txt.zst").write_bytes(zstandard.ZstdCompressor().compress("\n".join(seqs[25:]).encode() + b"\n\n"))
    m = run_prep(_cfg([tmp_path / "t.csv", tmp_path / "t.tsv"], tmp_path / "a",
                      input_spec=InputSpec(column="cds", id_column="id")))
    assert m["totals"]["kept"] == 20
    m = run_prep(_cfg([tmp_path / "unit.csv.gz"], tmp_path / "b",
                      input_spec=InputSpec(column="sequence_alignment", id_column="sequence_id")))
    assert m["totals"]["kept"] == 5
    m = run_prep(_cfg([str(tmp_path / "*.zst")], tmp_path / "c"))
    assert m["totals"] == {"records": 5, "kept": 5, "duplicates": 0, "rejected": {}}
    ids = {meta["id"] for rows in read_dataset(tmp_path / "a").values() for _, meta in rows}
    assert ids == {f"r{i}" for i in range(10)} | {f"q{i}" for i in range(10)}


def test_policy_options_trim_ambiguity_and_lengths(tmp_path):
    fasta = tmp_path / "p.fa"
    fasta.write_text(">a\nGCTGCTGCTGCTGCTGCTGCTGCTGCTGCTGC\n>b\nATGNCTGCTGCTGCTGCTGCTGCTGCTGCTTAA\n"
                     ">c\nacgugcugcugcugcugcugcugcugcugcu\n>d\n" + "GCT" * 50 + "\n")
    m = run_prep(_cfg([fasta], tmp_path / "ds", policy=RecordPolicy(frame="trim", max_ambiguous_codons=1,
                                                                    max_codons=40)))
    assert m["inputs"][0]["rejected"] == {"too_long": 1} and m["totals"]["kept"] == 3
    rows = {meta["id"]: t for r in read_dataset(tmp_path / "ds").values() for t, meta in r}
    for rid, seq in read_fasta(fasta)[:3]:
        assert rows[rid] == expected_outcome(seq, frame="trim", max_ambiguous=1, max_codons=40)[1]


BAD_INPUTS = {
    "truncated.fa.gz": (lambda p: p.write_bytes(gzip.compress(b">a\n" + random.Random(0).randbytes(9000).hex().encode())[:3000]),
                        "truncated"),
    "junk.fa": (lambda p: p.write_bytes(b">a\nATG\x00\x9f\xff\xfe\n"), "binary"),
    "empty.fa": (lambda p: p.write_bytes(b""), "empty"),
    "orphan.fa": (lambda p: p.write_text("ATGGCT\n>a\nATGGCTTAA\n"), "before the first"),
    "nocol.csv": (lambda p: p.write_text("id,seq\n1,ATG\n"), "no sequence column named 'cds'"),
    "notgzip.fa.gz": (lambda p: p.write_bytes(b"this is not gzip at all\n"), "corrupt"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_structural_errors_name_the_file_and_leave_nothing_behind(tmp_path, name, capsys):
    from helm_scale.cli import main
    good = tmp_path / "good.fa"
    write_fasta(good, generate(50, seed=1, median_codons=40, min_codons=12, defect_rate=0))
    make, message = BAD_INPUTS[name]
    make(tmp_path / name)
    out = tmp_path / "out"
    code = main(["prep", str(good), str(tmp_path / name), "-o", str(out), "--quiet", "--column", "cds",
                 "--shard-size", "2k"])
    err = capsys.readouterr().err
    assert code == 2 and name in err and message in err, err
    assert not out.exists()


def test_record_level_problems_are_counted_never_fatal(tmp_path):
    fasta = tmp_path / "messy.fa"
    fasta.write_text(">empty\n\n>iupac\nATGRYSGCTGCTGCTGCTGCTGCTGCTGCTTAA\n>protein\nMKVLAAGIVEEQQ\n"
                     ">lower\natggctgctgctgctgctgctgctgctgcttaa\n>rna\nAUGGCUGCUGCUGCUGCUGCUGCUGCUGCUUAA\n"
                     ">frame\nATGGCTGCTGCTGCTGCTGCTGCTGCTGCTTA\n>stop\nATGTAGGCTGCTGCTGCTGCTGCTGCTGCTTAA\n")
    m = run_prep(_cfg([fasta], tmp_path / "ds"))
    assert m["inputs"][0]["rejected"] == {"empty_sequence": 1, "ambiguous_bases": 1, "invalid_characters": 1,
                                          "not_multiple_of_3": 1, "internal_stop": 1}
    assert m["inputs"][0]["kept"] == 1 and m["inputs"][0]["duplicates"] == 1  # rna == lower case


def test_existing_output_is_refused_then_overwritten(corpus, tmp_path):
    out = tmp_path / "ds"
    run_prep(_cfg([corpus], out))
    with pytest.raises(InputError, match="finished dataset"):
        run_prep(_cfg([corpus], out))
    # As if killed while committing the manifest: its temporary copy is ours too.
    (out / "manifest.json").rename(temp_path(out / "manifest.json"))
    with pytest.raises(InputError, match="interrupted"):
        run_prep(_cfg([corpus], out))
    assert verify_ok(run_prep(_cfg([corpus], out, overwrite=True)), out)
    assert not temp_path(out / "manifest.json").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="did not write"):
        run_prep(_cfg([corpus], tmp_path / "mine", overwrite=True))
    assert (tmp_path / "mine" / "notes.txt").exists()


def verify_ok(manifest, out):
    return manifest["totals"]["kept"] > 0 and verify(out) == []


def test_verify_reports_corruption_missing_and_stray_files(corpus, tmp_path):
    out = tmp_path / "ds"
    m = run_prep(_cfg([corpus], out))
    shards = [s["path"] for s in m["splits"]["train"]["shards"]]
    data = bytearray((out / shards[0]).read_bytes())
    data[1500] ^= 0xFF
    (out / shards[0]).write_bytes(bytes(data))
    (out / shards[1]).unlink()
    temp_path(out / "train" / "shard-999999.tar").write_bytes(b"x")  # a shard writer killed mid-way
    problems = "\n".join(verify(out))
    assert f"{shards[0]}: sha256 differs" in problems and f"{shards[1]}: missing" in problems
    assert "half-written" in problems


def test_cli_help_and_synth_is_deterministic(tmp_path, capsys):
    from helm_scale.cli import main
    for cmd in ([], ["prep"], ["synth"], ["verify"]):
        with pytest.raises(SystemExit) as e:
            main(cmd + ["--help"])
        assert e.value.code == 0
    assert "--frame" in capsys.readouterr().out
    for name in ("a.fa.gz", "b.fa.gz"):
        assert main(["synth", str(tmp_path / name), "--records", "200", "--seed", "4"]) == 0
    assert (tmp_path / "a.fa.gz").read_bytes() == (tmp_path / "b.fa.gz").read_bytes()
    assert main(["synth", str(tmp_path / "c.fa"), "--records", "0"]) == 2


SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "corpus"


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/corpus is absent (real data is not part of the repo)")
def test_shared_corpus_preps_and_verifies(tmp_path):
    files = sorted(SHARED.glob("*.fasta.gz"))
    m = run_prep(_cfg(files, tmp_path / "ds", policy=RecordPolicy(frame="trim"), workers=2,
                      shard_bytes=4 << 20))
    by_name = {Path(i["path"]).name: i for i in m["inputs"]}
    for item in m["inputs"]:
        assert item["records"] == item["kept"] + item["duplicates"] + sum(item["rejected"].values())
    assert by_name["antibody_heavy_chains.fasta.gz"]["kept"] > 0.95 * by_name["antibody_heavy_chains.fasta.gz"]["records"]
    assert by_name["natural_cds.fasta.gz"]["kept"] > 0.9 * by_name["natural_cds.fasta.gz"]["records"]
    raw = by_name["raw_antibody_reads.fasta.gz"]  # untrimmed, some reverse-complemented
    assert sum(raw["rejected"].values()) > 0.3 * raw["records"]
    assert verify(tmp_path / "ds") == []


def test_gzip_inputs_read_the_same_with_isal_or_zlib(corpus, tmp_path, monkeypatch):
    import data_prep.readers as readers
    from data_prep.readers import read_records
    with_isal = [(r.record_id, r.line, r.sequence) for r in read_records(corpus, InputSpec())]
    monkeypatch.setattr(readers, "_gzip", gzip)  # the fallback when isal is not installed
    assert [(r.record_id, r.line, r.sequence) for r in read_records(corpus, InputSpec())] == with_isal
    truncated = tmp_path / "cut.fa.gz"
    truncated.write_bytes(corpus.read_bytes()[:len(corpus.read_bytes()) // 2])
    with pytest.raises(InputError, match="cut.fa.gz.*truncated"):
        list(read_records(truncated, InputSpec()))


@pytest.mark.parametrize("batch_bytes", [1, 7, 64, 1 << 20])
def test_fasta_batches_cut_anywhere_give_the_records_a_line_reader_gives(tmp_path, batch_bytes):
    from data_prep.readers import read_batches
    text = (";comment\n\n>first desc\nACGTAC\nGTA\n>  spaced\tid more\nGG\n>\nTTT\n>wrapped\r\nAC\r\nGT\r\n"
            ">x>y\nAC>G\n>empty\n>last\nAAACCC")
    path = tmp_path / "odd.fa"
    path.write_text(text)
    expected, header, line = [], None, 0
    for n, row in enumerate(text.split("\n"), 1):  # a plain line-by-line reading, for reference
        if row.startswith(">"):
            if header is not None:
                expected.append(header)
            words = row[1:].split()
            header = [words[0] if words else f"{path}:{n}", n, ""]
        elif header is not None:
            header[2] += "".join(row.split())
    expected.append(header)
    got = []
    for batch in read_batches(path, InputSpec(), batch_bytes=batch_bytes):
        got += [[batch.ids[i], int(batch.lines[i]), "".join(batch.sequence(i).decode().split())]
                for i in range(len(batch))]
    assert got == expected


def test_vectorised_split_assignment_matches_the_scalar_formula():
    """Splits are part of a dataset's definition: the NumPy path must agree, hash for
    hash, with ``int.from_bytes(blake2b) / 2**64`` compared to the fractions."""
    import numpy as np
    policy = SplitPolicy(val_fraction=0.3, test_fraction=0.2, seed=5)
    hashes = np.random.default_rng(1).integers(0, 2**64 - 1, size=50_000, dtype=np.uint64, endpoint=True)
    edges = [int(f * 2.0**64) + d for f in (0.2, 0.5) for d in (-2048, -1, 0, 1, 2048)]
    hashes = np.concatenate([hashes, np.array(edges + [0, 2**64 - 1], dtype=np.uint64)])
    scalar = ["test" if h / 2.0**64 < 0.2 else "val" if h / 2.0**64 < 0.5 else "train" for h in hashes.tolist()]
    assert [("train", "val", "test")[k] for k in policy.assign_hashes(hashes)] == scalar
