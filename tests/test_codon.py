import json

import numpy as np
import pytest

from helm_scale.codon import (CODONS, GENETIC_CODE, STOP_CODONS, CodonTree, Vocabulary, build_tree,
                              flat_tree, helm_tree, random_tree)

V = Vocabulary.default()


def test_genetic_code_is_the_standard_one():
    assert len(CODONS) == 64 and len(set(CODONS)) == 64
    assert sorted(c for c, a in GENETIC_CODE.items() if a == "*") == sorted(STOP_CODONS)
    assert len(set(GENETIC_CODE.values())) == 21  # 20 amino acids and stop
    assert GENETIC_CODE["ATG"] == "M" and GENETIC_CODE["TGG"] == "W"
    assert sorted(c for c, a in GENETIC_CODE.items() if a == "L") == ["CTA", "CTC", "CTG", "CTT", "TTA", "TTG"]
    assert sum(a == "S" for a in GENETIC_CODE.values()) == 6 and sum(a == "I" for a in GENETIC_CODE.values()) == 3


def test_vocabulary_order_encode_decode_and_json():
    assert len(V) == 69 and V.tokens[:5] == ("<pad>", "<cls>", "<eos>", "<unk>", "<mask>")
    assert V.tokens[5:] == CODONS and V.token_dtype == np.uint8
    # the vectorised tokenizer's contract: codon index 16*b0 + 4*b1 + b2 with ACGT = 0..3
    assert V.codon_lookup[16 * 3 + 4 * 0 + 2] == V.index["TAG"]
    ids = V.encode("ATGGCTTAA")
    assert ids == [V.cls_id, V.index["ATG"], V.index["GCT"], V.index["TAA"], V.eos_id]
    assert V.decode(ids) == "ATGGCTTAA"
    assert V.encode("ATGNNN", add_special=False) == [V.index["ATG"], V.unk_id]
    with pytest.raises(ValueError, match="multiple of 3"):
        V.encode("ATGG")
    again = Vocabulary.from_dict(json.loads(json.dumps(V.to_dict())))
    assert again == V and again.fingerprint == V.fingerprint
    assert Vocabulary(tokens=V.tokens[1:] + V.tokens[:1]).fingerprint != V.fingerprint
    with pytest.raises(ValueError, match="lacks"):
        Vocabulary(tokens=V.tokens[:-1])


def _names(tree, token):
    return [tree.names[n] for n in tree.path(V.index[token])]


def test_helm_tree_matches_the_paper():
    t = helm_tree(V)
    specials = len(V.specials)
    assert t.num_nodes == 1 + (1 + specials) + (3 + specials) + 23 + 60 == 98
    assert _names(t, "GCT") == ["GCT", "aa:A", "coding", "codons"]
    assert _names(t, "ATG") == ["ATG", "start", "codons"]
    assert _names(t, "TGA") == ["TGA", "stop", "codons"]
    assert _names(t, "<mask>") == ["<mask>", "special:<mask>"]
    leaf_depths = t.depth[list(t.leaf_of)]
    for token, depth in zip(V.tokens, leaf_depths):
        expected = 2 if token in V.specials else 3 if token == "ATG" or token in STOP_CODONS else 4
        assert depth == expected, token
    for codon, aa in GENETIC_CODE.items():  # every sense codon sits under its amino acid
        if aa not in "*M":
            assert _names(t, codon)[1] == f"aa:{aa}"
    assert len(t.level_groups(3)) == 23 and len(t.groups) == 1 + specials + 3 + 19


def test_paths_membership_and_groups_agree():
    for t in (helm_tree(V), random_tree(V, 5), flat_tree(V)):
        for tok in range(len(V)):
            on_path = set(t.paths[tok][t.paths[tok] >= 0])
            assert on_path == set(np.flatnonzero(t.membership[:, tok])) - {0}
        assert t.membership[0].all()
        for n in range(t.num_nodes):  # a node's mass is the sum of its children's
            kids = [c for c, p in enumerate(t.parents) if p == n]
            if kids:
                assert (t.membership[kids].sum(0) == t.membership[n]).all()
        assert CodonTree.from_dict(json.loads(json.dumps(t.to_dict()))) == t


def test_random_tree_is_a_seeded_regrouping_of_sense_codons():
    a, b, c = random_tree(V, 1), random_tree(V, 1), random_tree(V, 2)
    assert a == b and a.fingerprint != c.fingerprint
    groups = [n for n in a.groups if a.names[n].startswith("random:")]
    sizes = [int(a.membership[n].sum()) for n in groups]
    assert sum(sizes) == 60 and all(1 <= s <= 6 for s in sizes)
    assert _names(a, "ATG") == ["ATG", "start", "codons"]  # only the sense grouping changes


def test_lowest_common_ancestor_depth():
    lca = helm_tree(V).lowest_common_ancestor_depth()
    i = V.index
    assert lca[i["GCT"], i["GCC"]] == 3          # same amino acid
    assert lca[i["GCT"], i["TGG"]] == 2          # both coding
    assert lca[i["GCT"], i["TAA"]] == 1          # both codons
    assert lca[i["GCT"], i["<pad>"]] == 0        # only the root
    assert lca[i["GCT"], i["GCT"]] == 4 and (lca == lca.T).all()


def test_flat_tree_and_builder_by_name():
    f = flat_tree(V)
    assert f.height == 1 and f.num_nodes == 1 + len(V) and len(f.groups) == 0
    assert build_tree(V, "helm") == helm_tree(V) and build_tree(V, "random", 3) == random_tree(V, 3)
    with pytest.raises(ValueError, match="unknown tree kind"):
        build_tree(V, "oak")


def test_malformed_trees_are_refused():
    t = helm_tree(V)
    with pytest.raises(ValueError, match="share a leaf"):
        CodonTree("bad", t.names, t.parents, (t.leaf_of[0],) * len(t.leaf_of))
    with pytest.raises(ValueError, match="parent before"):
        CodonTree("bad", t.names, (-1, 5) + t.parents[2:], t.leaf_of)


def test_encode_batch_matches_a_per_character_reading():
    """The tokenizer (one table pass per batch) against a plain per-character statement of
    it: normalise (drop whitespace and gaps, upper case, U -> T), read codons from the first
    base, <unk> for any codon that is not three of A C G T, flag non-bases and IUPAC codons."""
    from helm_scale.tokenizer import normalise
    rng = np.random.default_rng(0)
    alphabet = list("ACGTacgtUuNnRyKm -.\t\r\nXZ*>")
    raw = ["".join(rng.choice(alphabet, size=rng.integers(0, 40))) for _ in range(2000)] + ["", "ATG", "atgu"]
    batch = V.encode_batch(raw)
    buffer = "".join(raw).encode()
    ends = np.cumsum([len(r) for r in raw])
    spans = V.encode_batch(buffer, ends - [len(r) for r in raw], ends)  # one buffer and spans: the same
    assert np.array_equal(spans.tokens, batch.tokens) and np.array_equal(spans.offsets, batch.offsets)
    for i, r in enumerate(raw):
        s = "".join(c for c in r.upper() if c not in " \t\r\n-.").replace("U", "T")
        assert normalise(r.encode()).decode() == s and batch.bases[i] == len(s)
        codons = [s[k:k + 3] for k in range(0, len(s) - len(s) % 3, 3)]
        assert batch.sequence(i).tolist() == [V.index.get(c, V.unk_id) for c in codons]
        assert batch.invalid[i] == any(c not in "ACGTNRYSWKMBDHV" for c in s)
        if not batch.invalid[i]:
            assert batch.ambiguous[i] == sum(any(c in "NRYSWKMBDHV" for c in codon) for codon in codons)


def test_encode_batch_check_names_the_bad_record():
    from helm_scale.tokenizer import SequenceError
    batch = V.encode_batch(["ATGAAA", "ATGXAA", "ATGA"])
    with pytest.raises(SequenceError, match="second: a character that is not a base"):
        batch.check(names=["first", "second", "third"])
    with pytest.raises(SequenceError, match="sequence 2: 4 bases, not a multiple of 3"):
        batch.check(whole_codons=True, allow_invalid=True)
    V.encode_batch(["ATGAAA", "NNNAAA"]).check(whole_codons=True)  # IUPAC codes are no error
    assert isinstance(SequenceError("x"), ValueError) and V.encode("ATGXYZ", add_special=False)[1] == V.unk_id
