"""synth's corpus has the structure it claims (protein families, a codon-pair preference,
human codon usage, log-normal lengths), and ``families=0`` is the corpus of earlier
versions byte for byte."""
import hashlib

import numpy as np
import pytest

from data_prep.synth import AMINO_ACIDS, SENSE_CODONS, _usage, generate
from helm_scale.cli import main
from helm_scale.codon import CODONS, GENETIC_CODE
from helm_scale.tokenizer import read_bases

AMINO_ACID_OF = np.array([AMINO_ACIDS.index(GENETIC_CODE[c]) if GENETIC_CODE[c] != "*" else -1 for c in CODONS])


def _codons(seq: str) -> np.ndarray:
    """Codon indices (CODONS order) of the body (between ATG and the stop)."""
    return read_bases([seq]).codon_index()[0][1:-1]


def _digest(records) -> str:
    h = hashlib.sha256()
    for record_id, seq in records:
        h.update(f">{record_id}\n{seq}\n".encode())
    return h.hexdigest()


@pytest.mark.parametrize("kwargs, digest", [
    # Computed with synth.py before families existed (commit bee1c8e).
    (dict(n_records=500, seed=3), "2e8ea537c4175fe039a88fc90ebdc75d9966d7643b20913883bf237f888b1dfb"),
    (dict(n_records=300, seed=7, median_codons=40, min_codons=10, max_codons=200, defect_rate=0.3),
     "dc7c80bd39b4c26ccf84f29eaa299bc0f794baebb9fe1815f3e8ecb25ecb1ae7"),
])
def test_no_families_is_the_corpus_of_earlier_versions(kwargs, digest):
    assert _digest(generate(**kwargs, families=0)) == digest


def _components(proteins, threshold: float) -> list[set[int]]:
    """Groups of records linked by positional identity above ``threshold`` over the first
    residues all records have."""
    n = min(len(p) for p in proteins)
    a = np.stack([p[:n] for p in proteins])
    linked = (a[:, None, :] == a[None, :, :]).mean(-1) > threshold
    seen, groups = set(), []
    for i in range(len(a)):
        if i in seen:
            continue
        group, todo = set(), [i]
        while todo:
            j = todo.pop()
            if j not in group:
                group.add(j)
                todo.extend(np.flatnonzero(linked[j]).tolist())
        seen |= group
        groups.append(group)
    return groups


def test_records_are_members_of_few_protein_families():
    kw = dict(n_records=240, seed=1, median_codons=60, min_codons=40, defect_rate=0.0)
    proteins = [AMINO_ACID_OF[_codons(s)] for _, s in generate(**kw, families=5, mutation_rate=0.1, indel_rate=0.0)]
    groups = _components(proteins, threshold=0.5)  # no indels: they shift the positions compared
    assert len(groups) == 5 and min(len(g) for g in groups) > 20
    # Members of a family share ~(1 - mutation rate)^2 of their residues, other pairs chance.
    n = min(len(p) for p in proteins)
    same = [np.mean(proteins[i][:n] == proteins[j][:n]) for g in groups for i in g for j in g if i < j]
    assert 0.7 < np.median(same) < 0.9
    # Without families, no two records are alike.
    independent = [AMINO_ACID_OF[_codons(s)] for _, s in generate(**kw, families=0)]
    assert len(_components(independent, threshold=0.3)) == len(independent)


def _information_gain(records) -> float:
    """Bits the previous codon tells about the next one beyond the next one's amino acid:
    H(next | its amino acid) - H(next | previous codon, its amino acid), plug-in estimates."""
    pairs = np.zeros((64, 64))
    for _, seq in records:
        c = _codons(seq)
        np.add.at(pairs, (c[:-1], c[1:]), 1)

    def entropy(counts):  # summed over the rows of counts (each a conditional distribution)
        p = counts / np.maximum(counts.sum(-1, keepdims=True), 1)
        return -(counts * np.log2(np.where(p > 0, p, 1))).sum()

    by_amino_acid = [np.flatnonzero(AMINO_ACID_OF == a) for a in range(len(AMINO_ACIDS))]
    given_amino_acid = sum(entropy(pairs.sum(0)[cols]) for cols in by_amino_acid)
    given_both = sum(entropy(pairs[:, cols]) for cols in by_amino_acid)
    return (given_amino_acid - given_both) / pairs.sum()


def _synonym_usage_distance(records) -> float:
    """Total variation between each amino acid's synonym shares and the human ones,
    weighted by how often the amino acid occurs."""
    counts = np.bincount(np.concatenate([_codons(s) for _, s in records]), minlength=64)
    human = dict(zip(SENSE_CODONS, _usage(SENSE_CODONS)))
    distance = 0.0
    for a in range(len(AMINO_ACIDS)):
        cols = np.flatnonzero(AMINO_ACID_OF == a)
        observed, expected = counts[cols] / counts[cols].sum(), np.array([human[CODONS[c]] for c in cols])
        distance += counts[cols].sum() / counts.sum() * 0.5 * np.abs(observed - expected / expected.sum()).sum()
    return distance


def test_codons_follow_a_pair_preference_while_usage_stays_human():
    kw = dict(n_records=1500, seed=0, defect_rate=0.0)
    paired, unpaired, independent = (list(generate(**kw, **extra)) for extra in
                                     (dict(pair_bias=0.5), dict(pair_bias=0.0), dict(families=0)))
    assert _information_gain(paired) > 0.25
    assert _information_gain(unpaired) < 0.02 and _information_gain(independent) < 0.02
    assert _synonym_usage_distance(paired) < 0.08
    assert _synonym_usage_distance(unpaired) < 0.01 and _synonym_usage_distance(independent) < 0.01
    # Lengths are drawn as without families: log-normal around the median, within bounds.
    lengths = np.array([len(s) // 3 for _, s in paired])
    assert 270 < np.median(lengths) < 330 and lengths.min() >= 30 and lengths.max() <= 1500


def test_records_are_coding_sequences_and_defects_are_still_seeded():
    records = list(generate(400, seed=2, median_codons=50, min_codons=10, max_codons=90, defect_rate=0.3,
                            indel_rate=0.2))
    clean = [s for rid, s in records if "defect=" not in rid]
    assert 80 < len(records) - len(clean) < 160
    assert {rid.split("defect=")[1] for rid, _ in records if "defect=" in rid} >= {"rna", "frame_shift", "duplicate"}
    for seq in clean:  # even with many indels: ATG, sense codons, a stop, lengths within bounds
        assert seq.startswith("ATG") and GENETIC_CODE[seq[-3:]] == "*" and 10 <= len(seq) // 3 <= 90
        assert (AMINO_ACID_OF[_codons(seq)] >= 0).all()


def test_cli_structure_options(tmp_path, capsys):
    out = tmp_path / "c.fa"
    assert main(["synth", str(out), "--records", "50", "--families", "3", "--mutation-rate", "0.2",
                 "--indel-rate", "0", "--pair-bias", "0.9"]) == 0
    assert "3 families, mutation rate 0.2" in capsys.readouterr().out
    expected = generate(50, families=3, mutation_rate=0.2, indel_rate=0.0, pair_bias=0.9)
    assert out.read_text() == "".join(f">{rid}\n" + "\n".join(s[i:i + 80] for i in range(0, len(s), 80)) + "\n"
                                      for rid, s in expected)
    for bad in (["--families", "-1"], ["--mutation-rate", "1.5"], ["--pair-bias", "-0.1"]):
        assert main(["synth", str(out), *bad]) == 2
    assert "families >= 0" in capsys.readouterr().err
