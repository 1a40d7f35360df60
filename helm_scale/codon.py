"""Codon vocabulary and HELM codon tree: the data every other module stands on.

It imports nothing of ours but the other bottom module, helm_scale.tokenizer. Its two
objects, :class:`Vocabulary` and :class:`CodonTree`, serialise to JSON so that every shard
manifest and every checkpoint records exactly which token order and which hierarchy it was made with; a fingerprint
(sha256 of the canonical JSON) makes a mismatch a one-line comparison.

:meth:`Vocabulary.encode_batch` is the project's one tokenizer with this vocabulary's ids:
it normalises and encodes many raw sequences at once (how: helm_scale.tokenizer, which
also holds SequenceError, the one error for bad sequence input).
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import numpy as np

from helm_scale.tokenizer import BASES, EncodedBatch, codon_code, encode, read_bases

# Standard genetic code, amino acid (one-letter) -> codons; '*' is stop.
_CODE_BY_AMINO_ACID = {
    "A": "GCT GCC GCA GCG", "R": "CGT CGC CGA CGG AGA AGG", "N": "AAT AAC",
    "D": "GAT GAC", "C": "TGT TGC", "Q": "CAA CAG", "E": "GAA GAG",
    "G": "GGT GGC GGA GGG", "H": "CAT CAC", "I": "ATT ATC ATA",
    "L": "TTA TTG CTT CTC CTA CTG", "K": "AAA AAG", "M": "ATG", "F": "TTT TTC",
    "P": "CCT CCC CCA CCG", "S": "TCT TCC TCA TCG AGT AGC", "T": "ACT ACC ACA ACG",
    "W": "TGG", "Y": "TAT TAC", "V": "GTT GTC GTA GTG", "*": "TAA TAG TGA",
}
GENETIC_CODE: dict[str, str] = {
    codon: aa for aa, codons in _CODE_BY_AMINO_ACID.items() for codon in codons.split()
}
START_CODON = "ATG"
STOP_CODONS = ("TAA", "TAG", "TGA")
# All 64 codons in lexicographic ACGT order, so codon index = 16*b0 + 4*b1 + b2 with
# A=0, C=1, G=2, T=3: the vectorised tokenizer relies on this.
CODONS = tuple(a + b + c for a in BASES for b in BASES for c in BASES)
assert len(GENETIC_CODE) == 64 and set(GENETIC_CODE) == set(CODONS)

VOCAB_VERSION = "helm-codon-v1"
DEFAULT_SPECIALS = ("<pad>", "<cls>", "<eos>", "<unk>", "<mask>")


def _fingerprint(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Vocabulary:
    """A fixed token order: special tokens first, then the 64 codons in ACGT order."""

    tokens: tuple[str, ...]
    version: str = VOCAB_VERSION

    @classmethod
    def default(cls) -> "Vocabulary":
        return cls(tokens=DEFAULT_SPECIALS + CODONS)

    def __post_init__(self):
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("vocabulary has duplicate tokens")
        missing = [c for c in CODONS if c not in self.tokens]
        if missing:
            raise ValueError(f"vocabulary lacks codons {missing[:5]}")
        for name in ("<pad>", "<cls>", "<eos>", "<unk>", "<mask>"):
            if name not in self.tokens:
                raise ValueError(f"vocabulary lacks the special token {name}")

    def __len__(self) -> int:
        return len(self.tokens)

    @cached_property
    def index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    @property
    def specials(self) -> tuple[str, ...]:
        return tuple(t for t in self.tokens if t not in GENETIC_CODE)

    @property
    def special_ids(self) -> tuple[int, ...]:
        return tuple(self.index[t] for t in self.specials)

    pad_id = property(lambda self: self.index["<pad>"])
    cls_id = property(lambda self: self.index["<cls>"])
    eos_id = property(lambda self: self.index["<eos>"])
    unk_id = property(lambda self: self.index["<unk>"])
    mask_id = property(lambda self: self.index["<mask>"])

    @cached_property
    def codon_lookup(self) -> np.ndarray:
        """int array of 64: codon index (16*b0 + 4*b1 + b2, ACGT = 0..3) -> token id."""
        return np.array([self.index[c] for c in CODONS], dtype=np.int64)

    @cached_property
    def amino_acid_of(self) -> tuple[str | None, ...]:
        """Per token id: the one-letter amino acid ('*' for stop), None for specials."""
        return tuple(GENETIC_CODE.get(t) for t in self.tokens)

    @property
    def token_dtype(self) -> np.dtype:
        return np.dtype(np.uint8 if len(self) <= 256 else np.uint16)

    def encode(self, dna: str, add_special: bool = True) -> list[int]:
        """Tokenise one sequence whose length is a multiple of 3 (see :meth:`encode_batch`)."""
        batch = self.encode_batch([dna])
        batch.check(whole_codons=True, allow_invalid=True)
        ids = batch.tokens.tolist()
        return [self.cls_id, *ids, self.eos_id] if add_special else ids

    def encode_batch(self, sequences: Sequence[str | bytes] | bytes, starts=None,
                     ends=None) -> EncodedBatch:
        """Normalise and tokenise many raw sequences at once.

        ``sequences`` is a list of str / bytes, or one bytes buffer with ``starts`` and
        ``ends`` (int arrays) marking each sequence in it. Normalising drops whitespace
        and gaps, upper-cases and reads U as T; codons are read from the first base and
        trailing bases dropped. A codon with an IUPAC ambiguity code, or a character that
        is no base at all, becomes ``<unk>``; the batch says which records hold either,
        so that callers can refuse them (:meth:`EncodedBatch.check`) or count them.
        """
        return encode(read_bases(sequences, starts, ends), self._codon_table)

    @cached_property
    def _codon_table(self) -> np.ndarray:
        """Base-6 codon code (helm_scale.tokenizer.codon_code) -> token id; others <unk>."""
        table = np.full(256, self.unk_id, dtype=np.int64)
        for i, codon in enumerate(CODONS):
            table[codon_code(codon)] = self.codon_lookup[i]
        return table.astype(self.token_dtype)

    def decode(self, ids, strip_special: bool = True) -> str:
        special = set(self.special_ids)
        return "".join(self.tokens[i] for i in ids if not (strip_special and i in special))

    def to_dict(self) -> dict:
        return {"version": self.version, "tokens": list(self.tokens)}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocabulary":
        return cls(tokens=tuple(d["tokens"]), version=d["version"])

    @property
    def fingerprint(self) -> str:
        return _fingerprint(self.to_dict())


@dataclass(frozen=True)
class CodonTree:
    """A rooted tree whose leaves are exactly the vocabulary's tokens.

    Nodes are stored as parallel tuples (name, parent index); node 0 is the root, and
    parents always come before their children. ``leaf_of[t]`` is the node of token t.
    """

    kind: str
    names: tuple[str, ...]
    parents: tuple[int, ...]  # parent node index; -1 for the root
    leaf_of: tuple[int, ...]  # token id -> leaf node index

    def __post_init__(self):
        if self.parents[0] != -1 or any(p < 0 or p >= i for i, p in enumerate(self.parents) if i):
            raise ValueError("tree nodes must list each parent before its children")
        if len(set(self.leaf_of)) != len(self.leaf_of):
            raise ValueError("two tokens share a leaf")
        children = set(self.parents)
        if any(n in children for n in self.leaf_of):
            raise ValueError("a token's leaf has children")
        if set(range(len(self.names))) - children - set(self.leaf_of):
            raise ValueError("the tree has a childless node that is no token's leaf")

    @property
    def num_nodes(self) -> int:
        return len(self.names)

    @cached_property
    def depth(self) -> np.ndarray:
        d = np.zeros(self.num_nodes, dtype=np.int64)
        for i in range(1, self.num_nodes):
            d[i] = d[self.parents[i]] + 1
        return d

    @property
    def height(self) -> int:
        return int(self.depth.max())

    def path(self, token: int) -> list[int]:
        """Nodes from the token's leaf up to, but excluding, the root."""
        node, out = self.leaf_of[token], []
        while node != 0:
            out.append(node)
            node = self.parents[node]
        return out

    @cached_property
    def paths(self) -> np.ndarray:
        """[V, height] node indices, leaf first, padded with -1 past the top."""
        out = np.full((len(self.leaf_of), self.height), -1, dtype=np.int64)
        for t in range(len(self.leaf_of)):
            p = self.path(t)
            out[t, : len(p)] = p
        return out

    @cached_property
    def membership(self) -> np.ndarray:
        """[num_nodes, V] bool: token v is a leaf under node n (the root holds all)."""
        m = np.zeros((self.num_nodes, len(self.leaf_of)), dtype=bool)
        m[0, :] = True
        for t in range(len(self.leaf_of)):
            m[self.path(t), t] = True
        return m

    @cached_property
    def groups(self) -> np.ndarray:
        """Indices of internal non-root nodes: the masses a loss must reduce per token."""
        internal = set(self.parents) - {-1, 0}
        return np.array(sorted(internal), dtype=np.int64)

    def level_groups(self, depth: int) -> list[int]:
        """Nodes at one depth: the per-level group membership."""
        return [n for n in range(self.num_nodes) if self.depth[n] == depth]

    def lowest_common_ancestor_depth(self) -> np.ndarray:
        """[V, V] depth of the deepest node that holds both tokens (the diagonal: leaf depth)."""
        m = self.membership
        both = m[:, :, None] & m[:, None, :]  # nodes x V x V
        return np.where(both, self.depth[:, None, None], -1).max(axis=0)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "names": list(self.names), "parents": list(self.parents),
                "leaf_of": list(self.leaf_of)}

    @classmethod
    def from_dict(cls, d: dict) -> "CodonTree":
        return cls(kind=d["kind"], names=tuple(d["names"]), parents=tuple(d["parents"]),
                   leaf_of=tuple(d["leaf_of"]))

    @property
    def fingerprint(self) -> str:
        return _fingerprint(self.to_dict())


class _TreeBuilder:
    def __init__(self, vocab: Vocabulary):
        self.vocab, self.names, self.parents = vocab, ["all_tokens"], [-1]
        self.leaf_of = [-1] * len(vocab)

    def node(self, name: str, parent: int) -> int:
        self.names.append(name)
        self.parents.append(parent)
        return len(self.names) - 1

    def leaf(self, token: str, parent: int) -> None:
        self.leaf_of[self.vocab.index[token]] = self.node(token, parent)

    def build(self, kind: str) -> CodonTree:
        assert -1 not in self.leaf_of, "every token needs a leaf"
        return CodonTree(kind, tuple(self.names), tuple(self.parents), tuple(self.leaf_of))


def _codon_tree(vocab: Vocabulary, kind: str, sense_groups: list[tuple[str, list[str]]]) -> CodonTree:
    """HELM's layout with the given grouping of the 60 non-start sense codons."""
    b = _TreeBuilder(vocab)
    codons = b.node("codons", 0)
    start, coding, stop = (b.node(n, codons) for n in ("start", "coding", "stop"))
    for special in vocab.specials:  # depth 1 node, leaf at depth 2
        b.leaf(special, b.node(f"special:{special}", 0))
    b.leaf(START_CODON, start)
    for group_name, members in sense_groups:
        g = b.node(group_name, coding)
        for c in members:
            b.leaf(c, g)
    for c in STOP_CODONS:
        b.leaf(c, stop)
    return b.build(kind)


def _sense_codons_by_amino_acid() -> list[tuple[str, list[str]]]:
    return [(f"aa:{aa}", [c for c in CODONS if GENETIC_CODE[c] == aa])
            for aa in sorted(set(GENETIC_CODE.values()) - {"*", "M"})]


def helm_tree(vocab: Vocabulary) -> CodonTree:
    """HELM's codon tree: codons / {start, coding / 19 amino acids, stop}, specials apart."""
    return _codon_tree(vocab, "helm", _sense_codons_by_amino_acid())


def random_tree(vocab: Vocabulary, seed: int = 0) -> CodonTree:
    """Ablation control: the 60 sense codons shuffled into random groups of 1..6."""
    rng = random.Random(seed)
    codons = [c for group in _sense_codons_by_amino_acid() for c in group[1]]
    rng.shuffle(codons)
    groups, i = [], 0
    while i < len(codons):
        size = rng.randint(1, 6)
        groups.append((f"random:{len(groups)}", codons[i:i + size]))
        i += size
    return _codon_tree(vocab, f"random-{seed}", groups)


def flat_tree(vocab: Vocabulary) -> CodonTree:
    """Every token a leaf directly under the root: HXE on it is plain cross-entropy."""
    b = _TreeBuilder(vocab)
    for t in vocab.tokens:
        b.leaf(t, 0)
    return b.build("flat")


TREE_BUILDERS = {"helm": helm_tree, "flat": flat_tree, "random": random_tree}


def build_tree(vocab: Vocabulary, kind: str = "helm", seed: int = 0) -> CodonTree:
    """Tree by name, as configuration names it: 'helm', 'flat' or 'random'."""
    if kind not in TREE_BUILDERS:
        raise ValueError(f"unknown tree kind {kind!r}; choose one of {sorted(TREE_BUILDERS)}")
    return random_tree(vocab, seed) if kind == "random" else TREE_BUILDERS[kind](vocab)
