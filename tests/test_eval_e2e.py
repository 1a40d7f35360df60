"""End to end on a tiny exported model: generate -> metrics, and intrinsic evaluation of a
tiny prepared corpus, through the function API and the CLI."""
import json
import math

import numpy as np
import pytest

from helm_scale.cli import main
from helm_scale.evaluate import (
    evaluate_intrinsic,
    generation_metrics,
    read_sequences,
    sequence_nll,
)
from helm_scale.export import load_exported
from tests.eval_utils import tiny_dataset, tiny_export


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("evaldata"))


@pytest.fixture(scope="module")
def clm(tmp_path_factory):
    return tiny_export(tmp_path_factory.mktemp("clm") / "export")


@pytest.fixture(scope="module")
def mlm(tmp_path_factory):
    return tiny_export(tmp_path_factory.mktemp("mlm") / "export", objective="mlm")


def test_intrinsic_clm_sees_every_test_sequence_and_agrees_with_sequence_scoring(dataset, clm):
    exported = load_exported(clm)
    out = evaluate_intrinsic(exported, dataset, "test", micro_batch_size=4, progress=False)
    test = read_sequences(dataset, "test")
    assert out["sequences"] == out["split_sequences"] == len(test)
    # Rows hold 64 tokens: <cls> + 62 codons + <eos>; a longer sequence is cut to <cls> + 63
    # codons with no <eos>, in the loader and in sequence_nll alike.
    assert any(len(s) // 3 > 62 for s in test)
    nll, nt = sequence_nll(exported, test, batch_size=5)
    tokens = sum(min(len(s) // 3 + 1, 63) for s in test)  # every codon and the <eos>, as cut
    assert out["tokens"] == tokens
    assert out["cross_entropy"] == pytest.approx(nll.sum() / tokens, rel=1e-5)
    assert out["per_nucleotide_perplexity"] == pytest.approx(math.exp(nll.sum() / nt.sum()), rel=1e-5)
    # Near-uniform weights: perplexity near the padded vocabulary (72 entries share the softmax).
    assert 60 < out["perplexity"] < 85
    assert {"codon_accuracy", "synonymous_accuracy", "start_stop_accuracy", "loss"} <= set(out)
    assert any(k.startswith("level") for k in out)
    one = evaluate_intrinsic(exported, dataset, "test", max_batches=1, micro_batch_size=4, progress=False)
    assert one["batches"] == 1 and one["sequences"] == 4


def test_intrinsic_mlm_through_the_cli(dataset, mlm, tmp_path, capsys):
    assert main(["eval", "intrinsic", str(mlm), "--data", str(dataset), "--quiet",
                 "-o", str(tmp_path / "mlm.json")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == json.loads((tmp_path / "mlm.json").read_text())
    assert out["objective"] == "mlm" and "per_nucleotide_perplexity" not in out
    # About 15% of the codons are masked, and only they are scored.
    codons = sum(len(s) // 3 for s in read_sequences(dataset, "test"))
    assert 0.08 * codons < out["tokens"] < 0.25 * codons and math.isfinite(out["loss"])


def test_generate_then_generation_metrics(clm, dataset, tmp_path, capsys):
    fasta = tmp_path / "gen.fasta"
    assert main(["generate", str(clm), "-n", "12", "-o", str(fasta), "--max-codons", "30", "--seed", "2",
                 "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n"] == 12
    generated = read_sequences(fasta)
    assert len(generated) == 12 and all(s.startswith("ATG") and len(s) <= 90 for s in generated)
    assert main(["eval", "generation", str(fasta), "--reference", str(dataset), "--split", "test",
                 "--model", str(clm), "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_generated"] == 12 and out["frechet_distance"] > 0
    assert 0 <= out["precision"] <= 1 and 0 <= out["recall"] <= 1
    assert 0 < out["codon_usage_js_divergence"] < 1 and 0 < out["diversity"]["generated"] <= 1
    assert out["valid_orf_fraction"]["reference"] == 1.0
    assert (tmp_path / "gen.codon_usage.png").is_file() and out["plot"].endswith("gen.codon_usage.png")
    # The same sequences on both sides: Frechet 0, divergence 0.
    same = generation_metrics(generated, generated, load_exported(clm), max_embed=12)
    assert same["frechet_distance"] == pytest.approx(0.0, abs=1e-6)
    assert same["codon_usage_js_divergence"] == pytest.approx(0.0, abs=1e-12)


def test_embeddings_are_mean_pooled_hidden_states(clm):
    from helm_scale.evaluate.lm.scoring import embed, encode
    exported = load_exported(clm)
    seqs = ["ATGAAATAA", "ATGCCCGGGTTTTAA"]
    pooled = embed(exported, seqs)
    batch = encode(exported.vocab, seqs[1:], 64)
    hidden = exported.model.hidden_states(batch["input_ids"]).detach().double().numpy()[0]
    assert np.allclose(pooled[1], hidden[: int(batch["segment_ids"][0].sum())].mean(0))


@pytest.mark.parametrize("argv, message", [
    (["eval", "intrinsic", "{tmp}", "--data", "{data}"], "not a helm-scale export"),
    (["eval", "intrinsic", "{clm}", "--data", "{tmp}"], "no manifest.json"),
    (["eval", "intrinsic", "{clm}", "--data", "{data}", "--split", "val"], "empty"),
    (["eval", "generation", "{tmp}/none.fa", "--reference", "{data}"], "no such file"),
    (["generate", "{mlm}", "-n", "2", "-o", "{tmp}/x.fa"], "causal"),
    (["generate", "{clm}", "-n", "2", "-o", "{tmp}/x.fa", "--prefix", "ATGC"], "whole codons"),
    (["eval", "mutation", "{mlm}", "--data", "{data}"], "causal"),
])
def test_bad_input_exits_2(argv, message, clm, mlm, dataset, tmp_path, capsys):
    args = [a.format(tmp=tmp_path, data=dataset, clm=clm, mlm=mlm) for a in argv]
    assert main(args + ["--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_evaluation_reads_raw_sequences_as_prep_does(tmp_path):
    """One tokenizer: raw records (lower case, RNA, gaps, line breaks, N, trailing bases)
    prepared into shards hold exactly the codons evaluation reads from the same FASTA, and
    from the same strings handed to the function API."""
    from collections import Counter

    from data_prep.policy import RecordPolicy
    from data_prep.prep import PrepConfig, SplitPolicy, run_prep
    from helm_scale.codon import CODONS, STOP_CODONS, Vocabulary
    from helm_scale.data.reader import SplitReader
    from helm_scale.evaluate.sequences import tokenise
    rng = np.random.default_rng(7)
    sense = [c for c in CODONS if c not in STOP_CODONS]
    raw = []
    for i in range(300):
        s = "".join(rng.choice(sense, rng.integers(1, 40)))
        s = s.lower() if i % 5 == 1 else s.replace("T", "U") if i % 5 == 2 else s
        s = s[:4] + "N" + s[5:] if i % 7 == 3 else s
        cut = int(rng.integers(0, len(s) + 1))
        raw.append(s[:cut] + rng.choice(["-", " ", ".", "\n", ""]) + s[cut:] + "ACG"[: i % 3])
    fasta = tmp_path / "raw.fa"
    fasta.write_text("".join(f">r{i}\n{s}\n" for i, s in enumerate(raw)))
    out = tmp_path / "shards"
    run_prep(PrepConfig(inputs=[str(fasta)], output=str(out), workers=1, progress=False, dedup=False,
                        policy=RecordPolicy(frame="trim", min_codons=1, max_ambiguous_codons=99),
                        split=SplitPolicy(val_fraction=0.2, test_fraction=0.2)))
    prepared = Counter()
    for split in ("train", "val", "test"):
        reader = SplitReader(out, split)
        prepared.update(tuple(reader.tokens(i).tolist()) for i in range(reader.num_samples))
        reader.close()
    assert sum(prepared.values()) == len(raw)
    vocab = Vocabulary.default()
    for sequences in (raw, read_sequences(fasta)):
        rows = tokenise(sequences, vocab, max_len=1000).ids
        assert Counter(tuple(r[1:-1].tolist()) for r in rows) == prepared
