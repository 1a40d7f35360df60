"""Property-prediction tasks from CSV files: column detection, values, splits.

A task is any CSV with a sequence column, a numeric value column and, optionally, a split
column (train / val / test). Column names are detected from common spellings unless given;
without a split column the rows get a seeded 80/10/10 split. Problems with the input raise
:class:`EvalInputError`, which the commands turn into exit code 2.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from helm_scale.evaluate.sequences import EvalInputError

# Detection order: the first present wins (exact name first, then case-insensitive).
SEQUENCE_COLUMNS = ("Sequence", "CDS", "cds", "sequence", "seq", "mrna", "rna", "dna")
VALUE_COLUMNS = ("Value", "value", "abundance", "label", "target", "y", "score", "expression")
SPLIT_COLUMNS = ("Split", "split", "set", "fold_split")
SPLIT_NAMES = {"train": 0, "training": 0, "val": 1, "valid": 1, "validation": 1, "dev": 1, "test": 2}
SPLITS = ("train", "val", "test")


@dataclass
class Task:
    name: str
    path: str
    sequences: list[str]
    values: np.ndarray           # float64, as read
    split: np.ndarray            # int8 per row: 0 train, 1 val, 2 test
    columns: dict[str, str | None]
    split_source: str
    notes: list[str] = field(default_factory=list)

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == SPLITS.index(split))

    def split_sizes(self) -> dict[str, int]:
        return {s: int((self.split == i).sum()) for i, s in enumerate(SPLITS)}


def find_task_files(paths: list[str]) -> list[Path]:
    """CSV files named directly, plus every *.csv under named directories (sorted)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.rglob("*.csv") if f.is_file())
            if not files:
                raise EvalInputError(f"{p}: directory has no .csv files")
            found.extend(files)
        elif p.is_file():
            found.append(p)
        else:
            raise EvalInputError(f"{p}: no such file or directory")
    return list(dict.fromkeys(found))  # each file once, first mention's order


def pick_column(header: list[str], wanted: str | None, candidates: tuple[str, ...], role: str,
                path, flag: str, required: bool = True) -> str | None:
    """The column to use for ``role``: ``wanted`` if given (must exist), else detected."""
    if wanted is not None:
        if wanted not in header:
            raise EvalInputError(f"{path}: no column {wanted!r} ({flag}); columns are {header}")
        return wanted
    for name in candidates:
        if name in header:
            return name
    lowered = {h.lower(): h for h in header}
    for name in candidates:
        if name.lower() in lowered:
            return lowered[name.lower()]
    if required:
        raise EvalInputError(f"{path}: no {role} column found (looked for {', '.join(candidates)}); "
                         f"columns are {header}: name it with {flag}")
    return None


def seeded_split(n: int, seed: int, fractions=(0.8, 0.1, 0.1)) -> np.ndarray:
    """Split labels for n rows from a seeded permutation: round(0.8 n) train, round(0.1 n)
    val, the rest test."""
    n_train, n_val = round(fractions[0] * n), round(fractions[1] * n)
    labels = np.full(n, 2, dtype=np.int8)
    order = np.random.default_rng(seed).permutation(n)
    labels[order[:n_train]] = 0
    labels[order[n_train:n_train + n_val]] = 1
    return labels


def read_task(path, sequence_column: str | None = None, value_column: str | None = None,
              split_column: str | None = None, split_seed: int = 0) -> Task:
    """Read one task CSV. Rows with an empty value are dropped (counted in ``notes``);
    anything else that does not parse is an :class:`EvalInputError` naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"{path}: no such file")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            raise EvalInputError(f"{path}: empty file (no header line)")
        header = [h.strip() for h in header]
        seq_col = pick_column(header, sequence_column, SEQUENCE_COLUMNS, "sequence", path, "--sequence-column")
        val_col = pick_column(header, value_column, VALUE_COLUMNS, "value", path, "--value-column")
        split_col = pick_column(header, split_column, SPLIT_COLUMNS, "split", path, "--split-column",
                                required=False)
        at = {name: header.index(name) for name in (seq_col, val_col, split_col) if name}
        sequences, values, splits, dropped = [], [], [], 0
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise EvalInputError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}")
            raw_value = row[at[val_col]].strip()
            if raw_value == "" or raw_value.lower() in ("nan", "na"):
                dropped += 1
                continue
            try:
                value = float(raw_value)
            except ValueError:
                raise EvalInputError(f"{path}:{line}: value {raw_value!r} in column {val_col!r} "
                                 "is not a number") from None
            if not math.isfinite(value):
                raise EvalInputError(f"{path}:{line}: value {raw_value!r} is not finite")
            seq = row[at[seq_col]].strip()
            if len(seq) < 3:
                raise EvalInputError(f"{path}:{line}: sequence {seq!r} is shorter than one codon")
            if split_col:
                name = row[at[split_col]].strip().lower()
                if name not in SPLIT_NAMES:
                    raise EvalInputError(f"{path}:{line}: split {row[at[split_col]]!r} is not one of "
                                     "train / val / valid / validation / dev / test")
                splits.append(SPLIT_NAMES[name])
            sequences.append(seq)
            values.append(value)
    if len(sequences) < 10:
        raise EvalInputError(f"{path}: {len(sequences)} usable rows; a task needs at least 10")
    notes = [f"dropped {dropped} rows with an empty value"] if dropped else []
    if split_col:
        split = np.array(splits, dtype=np.int8)
        split_source = f"column {split_col!r}"
        split = _complete_split(split, split_seed, notes, path)
    else:
        split = seeded_split(len(sequences), split_seed)
        split_source = f"seeded 80/10/10 (split seed {split_seed})"
    return Task(name=path.stem, path=str(path), sequences=sequences, values=np.array(values),
                split=split, columns={"sequence": seq_col, "value": val_col, "split": split_col},
                split_source=split_source, notes=notes)


def _complete_split(split: np.ndarray, seed: int, notes: list[str], path) -> np.ndarray:
    """A split column needs train and test; a missing val split is carved from train
    (a seeded ninth, so that train : val stays about 8 : 1)."""
    for i, name in ((0, "train"), (2, "test")):
        if not (split == i).any():
            raise EvalInputError(f"{path}: the split column has no {name} rows")
    if not (split == 1).any():
        train = np.flatnonzero(split == 0)
        chosen = np.random.default_rng(seed).permutation(train)[: max(1, len(train) // 9)]
        split = split.copy()
        split[chosen] = 1
        notes.append(f"no val rows: {len(chosen)} train rows moved to val (seed {seed})")
    return split
