"""Fingerprints of the loader's batch stream, independent of the shard format.

``tests/golden/loader_stream_v1.json`` holds these fingerprints as computed by the
format-1 code (commit 82bd328, one webdataset sample per sequence) with::

    python -m tests.loader_stream tests/golden/loader_stream_v1.json

The format-2 loader must reproduce them exactly: the same samples, in the same order,
batched, packed and masked the same way, for the same corpus and seed
(tests/test_shard_format.py). Sample indices are positions in the split, which both
formats assign in input order, so the fingerprints say nothing about the layout.
"""
from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from tests.corpora import loader_dataset

# One shard per split in either format (shard_bytes well above the split's size), so the
# shard permutation is the same, and several shuffle windows, so window order matters.
# The corpus is tests.corpora.LOADER_CORPUS (synth's unstructured one, families=0).
SHARD_BYTES = 64 << 20
VARIANTS = {
    "clm padded": dict(objective="clm", pack=False),
    "clm packed": dict(objective="clm", pack=True),
    "mlm packed": dict(objective="mlm", pack=True),
}
DP = ((1, 0), (2, 1))  # (dp_size, dp_rank)
EPOCHS = 2
# Multi-shard orders: pure functions of the shard sample counts (no data needed).
ORDER_CASES = [dict(sizes=[77, 77, 77, 46, 5, 130], seed=3, epoch=1, window=50),
               dict(sizes=[1000, 1, 999, 512], seed=0, epoch=0, window=300),
               dict(sizes=[4096] * 5 + [17], seed=11, epoch=2, window=4096)]


def _digest(batch) -> str:
    h = hashlib.sha256()
    for key in ("input_ids", "labels", "position_ids", "segment_ids", "sample_ids"):
        h.update(batch[key].numpy().astype("<i8").tobytes())
    return h.hexdigest()[:16]


def _array_digest(a) -> str:
    return hashlib.sha256(np.asarray(a).astype("<i8").tobytes()).hexdigest()[:16]


def stream_fingerprints(dataset_dir: Path) -> dict:
    from helm_scale.data import LoaderConfig, build_loader
    out = {}
    for name, kw in VARIANTS.items():
        for dp_size, dp_rank in DP:
            cfg = LoaderConfig(str(dataset_dir), seq_len=128, micro_batch_size=8, num_workers=0,
                               shuffle_window=64, seed=3, **kw)
            loader = build_loader(cfg, dp_rank, dp_size)
            batches = []
            for _ in range(EPOCHS):
                batches += [_digest(b) for b in loader]
            out[f"{name} dp{dp_size}r{dp_rank}"] = batches
    return out


def order_fingerprints() -> list:
    from helm_scale.data.order import EpochOrder, RowPlan
    out = []
    for case in ORDER_CASES:
        order = EpochOrder(case["sizes"], case["seed"], case["epoch"], case["window"])
        lengths = np.random.default_rng(case["seed"]).integers(5, 300, size=sum(case["sizes"]))
        plan = RowPlan(order, 444, lengths)
        rows = plan.rows(0, plan.num_rows)
        starts = np.cumsum([0] + [len(r) for r in rows])[:-1]
        out.append({**case, "order": _array_digest(order.all_samples()),
                    "row_starts": _array_digest(starts)})
    return out


def fingerprints() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        dataset = loader_dataset(Path(tmp) / "corpus", SHARD_BYTES)
        return {"streams": stream_fingerprints(dataset), "orders": order_fingerprints()}


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(json.dumps(fingerprints()) + "\n")
