"""Generate a deterministic synthetic corpus of realistic coding sequences (FASTA).

Each record is a random protein back-translated with the human codon-usage table: ATG,
sense codons drawn by their usage frequency, a stop codon drawn by stop usage, and a
log-normal length like that of real CDSs. A small, seeded fraction of records carries
the defects real corpora have (lower case, RNA, N bases, broken frame, internal stops,
exact duplicates), so a demo of ``prep`` shows its accounting. Same seed, same bytes.
"""
from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import numpy as np

from helm_scale.codon import CODONS, GENETIC_CODE, START_CODON, STOP_CODONS

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


def _usage(codons) -> np.ndarray:
    w = np.array([_HUMAN_USAGE_PER_THOUSAND[c] for c in codons])
    return w / w.sum()


def generate(n_records: int, seed: int = 0, median_codons: int = 300, min_codons: int = 30,
             max_codons: int = 1500, defect_rate: float = 0.02):
    """Yields (record id, sequence) pairs; a pure function of its arguments."""
    rng = np.random.default_rng(seed)
    sense = [c for c in CODONS if GENETIC_CODE[c] != "*"]
    sense_p, stop_p = _usage(sense), _usage(STOP_CODONS)
    codon_bytes = np.array([c.encode() for c in sense])
    previous = None
    for i in range(n_records):
        length = int(np.clip(rng.lognormal(np.log(median_codons), 0.55), min_codons, max_codons))
        body = codon_bytes[rng.choice(len(sense), size=length - 2, p=sense_p)].tobytes()  # S3: no padding
        seq = START_CODON.encode() + body + STOP_CODONS[rng.choice(3, p=stop_p)].encode()
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
    """Writes atomically (a .partial file renamed at the end); .gz output carries no
    name or time in its header, so the same records give the same bytes."""
    n, tmp = 0, path.with_name(path.name + ".partial")
    with open(tmp, "wb") as raw:
        # Level 6, not gzip's default 9: several times faster, a few % larger.
        out = (gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6)
               if path.suffix == ".gz" else raw)
        with out:
            for record_id, seq in records:
                lines = "\n".join(seq[i:i + line_width] for i in range(0, len(seq), line_width))
                out.write(f">{record_id}\n{lines}\n".encode())
                n += 1
    tmp.replace(path)
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


def run(args) -> int:
    if args.records < 1 or not (0 <= args.defect_rate <= 1) or not (2 < args.min_codons <= args.max_codons):
        print("helm-scale synth: error: need records >= 1, 0 <= defect-rate <= 1 and "
              "2 < min-codons <= max-codons", file=sys.stderr)
        return 2
    path = Path(args.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = write_fasta(path, generate(args.records, args.seed, args.median_codons, args.min_codons,
                                   args.max_codons, args.defect_rate))
    print(f"wrote {n:,} synthetic records to {path}")
    return 0
