"""Generate a deterministic synthetic corpus of realistic coding sequences (FASTA).

Each record is ATG, a protein back-translated with the human codon-usage table, and a
stop codon drawn by stop usage, with a log-normal length like that of real CDSs. The
proteins come from a few families, so that a language model has something to learn: a
family is a random consensus protein, a member is its first residues (as many as the
record's length) with substitutions and indels, so lengths are as without families. Codons carry a codon-pair preference: after each codon, one synonym of the next
amino acid is preferred, chosen by usage, so the usage stays human on average while the
next codon depends on the previous one. ``families=0`` gives the unstructured corpus of
earlier versions (independent random proteins and codons), record for record.

A small, seeded fraction of records carries the defects real corpora have (lower case,
RNA, N bases, broken frame, internal stops, exact duplicates), so a demo of ``prep``
shows its accounting. Same arguments, same bytes.
"""
from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import numpy as np

from helm_scale.codon import CODONS, GENETIC_CODE, START_CODON, STOP_CODONS
from helm_scale.durable import commit_file, temp_path

# Homo sapiens codon usage, per thousand codons (Kazusa codon usage database), in the
# ACGT order of helm_scale.codon.CODONS.
_HUMAN_USAGE_PER_THOUSAND = dict(zip(
    "TTT TTC TTA TTG CTT CTC CTA CTG ATT ATC ATA ATG GTT GTC GTA GTG "
    "TCT TCC TCA TCG CCT CCC CCA CCG ACT ACC ACA ACG GCT GCC GCA GCG "
    "TAT TAC TAA TAG CAT CAC CAA CAG AAT AAC AAA AAG GAT GAC GAA GAG "
    "TGT TGC TGA TGG CGT CGC CGA CGG AGT AGC AGA AGG GGT GGC GGA GGG".split(),
    [17.6, 20.3, 7.7, 12.9, 13.2, 19.6, 7.2, 39.6, 16.0, 20.8, 7.5, 22.0, 11.0, 14.5, 7.1, 28.1,
     15.2, 17.7, 12.2, 4.4, 17.5, 19.8, 16.9, 6.9, 13.1, 18.9, 15.1, 6.1, 18.4, 27.7, 15.8, 7.4,
     12.2, 15.3, 1.0, 0.8, 10.9, 15.1, 12.3, 34.2, 17.0, 19.1, 24.4, 31.9, 21.8, 25.1, 29.0, 39.6,
     10.6, 12.6, 1.6, 13.2, 4.5, 10.4, 6.2, 11.4, 12.1, 19.5, 12.2, 12.0, 10.8, 22.2, 16.5, 16.5]))
DEFECTS = ("lower_case", "rna", "ambiguous_base", "frame_shift", "internal_stop", "duplicate")
SENSE_CODONS = tuple(c for c in CODONS if GENETIC_CODE[c] != "*")
AMINO_ACIDS = tuple(sorted({GENETIC_CODE[c] for c in SENSE_CODONS}))
# Defaults of the structure: a model the size of configs/tiny.yaml visibly learns both
# within the demo's 300 steps (see the README's synth section).
FAMILIES, MUTATION_RATE, INDEL_RATE, PAIR_BIAS = 8, 0.1, 0.005, 0.5


def _usage(codons) -> np.ndarray:
    w = np.array([_HUMAN_USAGE_PER_THOUSAND[c] for c in codons])
    return w / w.sum()


class _Families:
    """Family consensus proteins and the codon-pair table, drawn once from ``rng``; then
    ``body(rng, length)`` draws one member, back-translated, as indices into SENSE_CODONS."""

    # Residues read past a member's length, so that its deletions rarely leave it short.
    DELETION_MARGIN = 32
    START = SENSE_CODONS.index(START_CODON)  # the codon before a body's first one

    def __init__(self, rng, n_families: int, max_length: int, mutation_rate: float,
                 indel_rate: float, pair_bias: float):
        sense_p = _usage(SENSE_CODONS)
        self.amino_acid_of = np.array([AMINO_ACIDS.index(GENETIC_CODE[c]) for c in SENSE_CODONS])
        self.amino_acid_p = np.bincount(self.amino_acid_of, weights=sense_p, minlength=len(AMINO_ACIDS))
        # synonyms[a, k]: the k-th codon of amino acid a; cumulative[a, k]: the usage shares of
        # its first k + 1 synonyms, summed (1 from the last synonym on: no draw goes past it).
        self.synonyms = np.zeros((len(AMINO_ACIDS), 6), dtype=np.int64)
        self.cumulative = np.ones((len(AMINO_ACIDS), 6))
        for a in range(len(AMINO_ACIDS)):
            codons = np.flatnonzero(self.amino_acid_of == a)
            self.synonyms[a, :len(codons)] = codons
            self.cumulative[a, :len(codons)] = np.cumsum(sense_p[codons] / sense_p[codons].sum())
        self.consensus = [rng.choice(len(AMINO_ACIDS), size=max_length + self.DELETION_MARGIN, p=self.amino_acid_p)
                          for _ in range(n_families)]
        # preferred[previous codon][amino acid]: a synonym drawn by usage, so that over all
        # previous codons the usage is the human one on average.
        every_pair = np.tile(np.arange(len(AMINO_ACIDS)), (len(SENSE_CODONS), 1))
        self.preferred = self._synonyms_by_usage(rng, every_pair).tolist()  # lists: read in a Python loop
        self.mutation_rate, self.indel_rate, self.pair_bias = mutation_rate, indel_rate, pair_bias

    def _synonyms_by_usage(self, rng, amino_acids: np.ndarray) -> np.ndarray:
        u = rng.random(amino_acids.shape)
        k = (u[..., None] >= self.cumulative[amino_acids]).sum(-1)
        return self.synonyms[amino_acids, k]

    def _residues(self, rng, n: int) -> np.ndarray:
        return rng.choice(len(AMINO_ACIDS), size=n, p=self.amino_acid_p)

    def body(self, rng, length: int) -> np.ndarray:
        protein = self.consensus[rng.integers(len(self.consensus))][:length + self.DELETION_MARGIN]
        substituted = rng.random(len(protein)) < self.mutation_rate
        protein = np.where(substituted, self._residues(rng, len(protein)), protein)
        protein = np.delete(protein, np.flatnonzero(rng.random(len(protein)) < self.indel_rate / 2))
        at = np.flatnonzero(rng.random(len(protein)) < self.indel_rate / 2)
        protein = np.insert(protein, at, self._residues(rng, len(at)))
        if len(protein) < length:  # more deletions than the margin: rare, but lengths are exact
            protein = np.concatenate([protein, self._residues(rng, length - len(protein))])
        protein = protein[:length]
        codons = self._synonyms_by_usage(rng, protein).tolist()
        # Sequential by nature (each preferred codon depends on the one before it, which may
        # itself be preferred), so a plain loop over the preferred positions only.
        for i in np.flatnonzero(rng.random(len(protein)) < self.pair_bias).tolist():
            codons[i] = self.preferred[codons[i - 1] if i else self.START][protein[i]]
        return np.array(codons, dtype=np.int64)


def generate(n_records: int, seed: int = 0, median_codons: int = 300, min_codons: int = 30,
             max_codons: int = 1500, defect_rate: float = 0.02, families: int = FAMILIES,
             mutation_rate: float = MUTATION_RATE, indel_rate: float = INDEL_RATE,
             pair_bias: float = PAIR_BIAS):
    """Yields (record id, sequence) pairs; a pure function of its arguments. ``families=0``:
    independent random proteins and codons (the structure arguments are then unused)."""
    rng = np.random.default_rng(seed)
    sense_p, stop_p = _usage(SENSE_CODONS), _usage(STOP_CODONS)
    codon_bytes = np.array([c.encode() for c in SENSE_CODONS])
    family = _Families(rng, families, max_codons - 2, mutation_rate, indel_rate, pair_bias) if families else None
    previous = None
    for i in range(n_records):
        length = int(np.clip(rng.lognormal(np.log(median_codons), 0.55), min_codons, max_codons)) - 2
        if family is None:
            body = rng.choice(len(SENSE_CODONS), size=length, p=sense_p)
        else:
            body = family.body(rng, length)
        seq = (START_CODON.encode() + codon_bytes[body].tobytes()  # S3: no padding
               + STOP_CODONS[rng.choice(3, p=stop_p)].encode())
        defect = DEFECTS[rng.integers(len(DEFECTS))] if rng.random() < defect_rate else None
        seq = _apply_defect(seq, defect, rng, previous)
        previous = seq
        yield f"synth_{i:08d}" + (f" defect={defect}" if defect else ""), seq.decode()


def _apply_defect(seq: bytes, defect, rng, previous) -> bytes:
    if defect == "lower_case":
        return seq.lower()
    if defect == "rna":
        return seq.replace(b"T", b"U")
    if defect == "ambiguous_base":
        k = int(rng.integers(3, len(seq) - 3))
        return seq[:k] + b"N" + seq[k + 1:]
    if defect == "frame_shift":
        k = int(rng.integers(3, len(seq) - 3))
        return seq[:k] + seq[k + 1:]
    if defect == "internal_stop":
        k = 3 * int(rng.integers(1, len(seq) // 3 - 1))
        return seq[:k] + b"TAG" + seq[k + 3:]
    if defect == "duplicate" and previous is not None:
        return previous
    return seq


def write_fasta(path: Path, records, line_width: int = 80) -> int:
    """Writes atomically (helm_scale.durable: a temporary sibling committed at the end);
    .gz output carries no name or time in its header, so the same records give the same bytes."""
    n, tmp = 0, temp_path(path)
    with open(tmp, "wb") as raw:
        # Level 6, not gzip's default 9: several times faster, a few % larger.
        out = (gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6)
               if path.suffix == ".gz" else raw)
        with out:
            for record_id, seq in records:
                lines = "\n".join(seq[i:i + line_width] for i in range(0, len(seq), line_width))
                out.write(f">{record_id}\n{lines}\n".encode())
                n += 1
    commit_file(tmp, path)
    return n


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("output", help="FASTA file to write (.fa, .fasta; add .gz to compress)")
    p.add_argument("--records", type=int, default=10_000, help="number of records (default 10000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--median-codons", type=int, default=300, help="median CDS length (default 300)")
    p.add_argument("--min-codons", type=int, default=30)
    p.add_argument("--max-codons", type=int, default=1500)
    p.add_argument("--defect-rate", type=float, default=0.02,
                   help=f"fraction of records with one defect of: {', '.join(DEFECTS)} (default 0.02)")
    p.add_argument("--families", type=int, default=FAMILIES,
                   help=f"protein families the records are drawn from (default {FAMILIES}); 0: independent "
                        "random proteins and codons, no structure to learn (the corpus of earlier versions)")
    p.add_argument("--mutation-rate", type=float, default=MUTATION_RATE,
                   help=f"per residue, chance a member differs from its family's consensus (default {MUTATION_RATE})")
    p.add_argument("--indel-rate", type=float, default=INDEL_RATE,
                   help=f"per residue, chance of an insertion or a deletion against the consensus (default {INDEL_RATE})")
    p.add_argument("--pair-bias", type=float, default=PAIR_BIAS,
                   help="per codon, chance it is the synonym preferred after the previous codon instead of "
                        f"one drawn by usage alone (default {PAIR_BIAS}; 0: codons independent)")


def run(args) -> int:
    rates = (args.defect_rate, args.mutation_rate, args.indel_rate, args.pair_bias)
    if (args.records < 1 or args.families < 0 or not all(0 <= r <= 1 for r in rates)
            or not (2 < args.min_codons <= args.max_codons)):
        print("helm-scale synth: error: need records >= 1, families >= 0, defect-rate, mutation-rate, "
              "indel-rate and pair-bias in [0, 1], and 2 < min-codons <= max-codons", file=sys.stderr)
        return 2
    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = write_fasta(path, generate(args.records, args.seed, args.median_codons, args.min_codons,
                                   args.max_codons, args.defect_rate, args.families, args.mutation_rate,
                                   args.indel_rate, args.pair_bias))
    structure = (f"{args.families} families, mutation rate {args.mutation_rate}, indel rate {args.indel_rate}, "
                 f"codon-pair bias {args.pair_bias}" if args.families else "no families, independent codons")
    print(f"wrote {n:,} synthetic records ({structure}) to {path}")
    return 0
