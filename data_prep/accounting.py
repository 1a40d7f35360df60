"""Where every input record went: kept, duplicate, or rejected with a named reason.

The invariant ``kept + duplicates + rejected == records`` is checked per file before a
manifest is written; a bounded, deterministic sample of rejects per reason goes to
``rejects.jsonl`` so users can see what was dropped and why.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class FileTally:
    path: str
    records: int = 0
    kept: int = 0
    duplicates: int = 0
    rejected: Counter = field(default_factory=Counter)

    def check(self) -> None:
        total = self.kept + self.duplicates + sum(self.rejected.values())
        if total != self.records:  # a bug in prep, never the user's input
            raise AssertionError(f"{self.path}: {self.records} records read but {total} accounted for")

    def to_dict(self) -> dict:
        return {"records": self.records, "kept": self.kept, "duplicates": self.duplicates,
                "rejected": dict(sorted(self.rejected.items()))}


class RejectSampler:
    """Keeps the first ``per_reason`` rejects of each reason (input order: deterministic).
    Callers ask for ``room``, ``add`` that many in input order, then ``count`` them all."""

    def __init__(self, per_reason: int):
        self.per_reason, self.rows, self.seen = per_reason, [], Counter()

    def room(self, reason: str) -> int:
        return max(0, self.per_reason - self.seen[reason])

    def count(self, reason: str, n: int) -> None:
        self.seen[reason] += n

    def add(self, reason: str, source: str, line: int, record_id: str, sequence: bytes) -> None:
        text = sequence[:300].decode(errors="replace")
        self.rows.append({"reason": reason, "source": source, "line": line, "id": record_id,
                          "sequence": text + ("..." if len(sequence) > 300 else "")})

    def write(self, path) -> None:
        with open(path, "w") as f:
            for row in self.rows:
                f.write(json.dumps(row) + "\n")


def totals(tallies: list[FileTally]) -> dict:
    rejected = Counter()
    for t in tallies:
        rejected.update(t.rejected)
    return {"records": sum(t.records for t in tallies), "kept": sum(t.kept for t in tallies),
            "duplicates": sum(t.duplicates for t in tallies), "rejected": dict(sorted(rejected.items()))}


def format_summary(manifest: dict, elapsed: float, input_bytes: int) -> str:
    """The end-of-run table: per input, per split, per reject reason, and throughput."""
    lines = [f"{'input':<48} {'records':>10} {'kept':>10} {'dups':>8} {'rejected':>9}"]
    for item in manifest["inputs"]:
        name = item["path"] if len(item["path"]) <= 48 else "..." + item["path"][-45:]
        lines.append(f"{name:<48} {item['records']:>10,} {item['kept']:>10,} "
                     f"{item['duplicates']:>8,} {sum(item['rejected'].values()):>9,}")
    tot = manifest["totals"]
    lines.append(f"{'total':<48} {tot['records']:>10,} {tot['kept']:>10,} {tot['duplicates']:>8,} "
                 f"{sum(tot['rejected'].values()):>9,}")
    lines.append("")
    lines.append(f"{'split':<8} {'samples':>10} {'codons':>14} {'shards':>7} {'MB':>9}")
    for name, split in manifest["splits"].items():
        mb = sum(s["bytes"] for s in split["shards"]) / 1e6
        lines.append(f"{name:<8} {split['samples']:>10,} {split['tokens']:>14,} "
                     f"{len(split['shards']):>7} {mb:>9.1f}")
    if tot["rejected"]:
        lines.append("")
        lines.append(f"{'rejected because':<24} {'records':>10}")
        for reason, n in tot["rejected"].items():
            lines.append(f"{reason:<24} {n:>10,}")
    rate = tot["records"] / elapsed if elapsed else 0.0
    lines.append("")
    lines.append(f"{tot['records']:,} records in {elapsed:.1f} s: {rate:,.0f} records/s, "
                 f"{input_bytes / 1e6 / elapsed if elapsed else 0:.1f} MB/s of input")
    return "\n".join(lines)
