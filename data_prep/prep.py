"""Turn raw mRNA corpora into validated, codon-tokenised webdataset shards.

Inputs: FASTA (.fa .fasta .fna), CSV / TSV (``--column``), OAS data units (csv.gz whose
first line is JSON metadata), plain one-sequence-per-line text (.txt .seq); each may be
.gz or .zst compressed; directories and globs expand to many files. Every record ends as
kept, duplicate or rejected with a named reason, per file, in the manifest and summary.
The output is byte-identical whatever the number of workers.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from helm_scale.codon import Vocabulary, helm_tree
from helm_scale.durable import temp_path, write_atomic
from helm_scale.shard_format import DEFAULT_CHUNK_BYTES, FORMAT, MANIFEST, SPLITS
from helm_scale.tokenizer import normalise

from . import shards
from .accounting import FileTally, RejectSampler, format_summary, totals
from .dedup import SeenHashes
from .policy import KEPT, REJECT_REASONS, RecordPolicy, process_batch
from .readers import InputError, InputSpec, RecordBatch, TrackedFile, detect_format, discover, read_batches

INCOMPLETE_MARKER = ".prep-incomplete"
# What prep writes at the top of its output directory (the manifest's temporary name too:
# a run killed while committing it leaves that behind).
OUR_FILES = (MANIFEST, temp_path(MANIFEST).name, "rejects.jsonl", INCOMPLETE_MARKER)
# Level 7 (lazy matching) makes antibody tokens 0.83x the size level 3 gives (natural CDSs:
# 1.0x, they are near their entropy) and still compresses ~150-400 MB/s of tokens.
DEFAULT_ZSTD_LEVEL = 7


@dataclass(frozen=True)
class SplitPolicy:
    by: str = "sequence"          # "sequence": hash of the tokens; "group": hash of the group key
    val_fraction: float = 0.01
    test_fraction: float = 0.01
    seed: int = 0

    def __post_init__(self):
        if self.by not in ("sequence", "group"):
            raise ValueError(f"split-by must be 'sequence' or 'group', not {self.by!r}")
        if not (0 <= self.val_fraction and 0 <= self.test_fraction
                and self.val_fraction + self.test_fraction < 1):
            raise ValueError("need 0 <= val, test fractions and val + test < 1")

    @property
    def salt(self) -> bytes:
        return self.seed.to_bytes(16, "little")

    def assign(self, key: bytes) -> str:
        """A pure function of the key: the same record lands in the same split whatever
        the input order or worker count."""
        h = hashlib.blake2b(key, digest_size=8, salt=self.salt)
        return SPLITS[int(self.assign_hashes(np.frombuffer(h.digest(), dtype="<u8"))[0])]

    def assign_hashes(self, hashes: np.ndarray) -> np.ndarray:
        """Index into SPLITS per 8-byte salted blake2b hash (what :meth:`assign` computes)."""
        u = np.asarray(hashes, dtype=np.uint64).astype(np.float64) / 2.0**64
        return np.where(u < self.test_fraction, SPLITS.index("test"),
                        np.where(u < self.test_fraction + self.val_fraction, SPLITS.index("val"),
                                 SPLITS.index("train")))


@dataclass
class PrepConfig:
    inputs: list[str]
    output: str
    input_spec: InputSpec = field(default_factory=InputSpec)
    policy: RecordPolicy = field(default_factory=RecordPolicy)
    split: SplitPolicy = field(default_factory=SplitPolicy)
    dedup: bool = True
    shard_bytes: int = 128 << 20       # on disk, compressed
    chunk_bytes: int = DEFAULT_CHUNK_BYTES  # tokens per tar member, before compression
    zstd_level: int = DEFAULT_ZSTD_LEVEL
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    batch_bytes: int = 4 << 20         # input text per batch of records
    rejects_per_reason: int = 20
    overwrite: bool = False
    progress: bool = True

    def settings(self) -> dict:
        """What determines the output's content (the worker count does not)."""
        return {"input_spec": asdict(self.input_spec), "policy": asdict(self.policy),
                "split": asdict(self.split), "dedup": self.dedup, "shard_bytes": self.shard_bytes,
                "chunk_bytes": self.chunk_bytes, "zstd_level": self.zstd_level}


class _Pool:
    """Ordered batch processing and shard writing on worker processes, with a bounded
    number of tasks in flight so memory stays flat however large the corpus; with one
    worker, the same functions run inline."""

    def __init__(self, workers: int):
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        self.executor = (ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"))
                         if workers > 1 else None)
        self.workers = max(workers, 1)
        self.limit = 2 * self.workers  # record batches in flight: keeps every worker fed

    def submit(self, fn, *args):
        return self.executor.submit(fn, *args) if self.executor else _Done(fn(*args))

    def close(self, abort: bool = False):
        # On abort, let running tasks finish (a shard write takes seconds) rather than
        # killing workers mid-write, which can leave the pool's queues locked.
        if self.executor:
            self.executor.shutdown(wait=True, cancel_futures=abort)


class _Done:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


def prepare_output(cfg: PrepConfig) -> bool:
    """Make the output directory ready; returns whether we created it. Refuses to mix
    with a finished or interrupted run unless --overwrite, and never deletes files that
    are not ours."""
    out = Path(cfg.output)
    if not out.exists():
        out.mkdir(parents=True)
        return True
    ours = {*OUR_FILES, *SPLITS}
    present = {p.name for p in out.iterdir()}
    if present - ours:
        raise InputError(str(out), None, f"output directory holds files prep did not write "
                         f"({sorted(present - ours)[:3]}); choose an empty or new directory")
    if present and not cfg.overwrite:
        state = "a finished dataset" if MANIFEST in present else "an interrupted prep run"
        raise InputError(str(out), None, f"output directory holds {state}; pass --overwrite to "
                         "replace it (prep is deterministic, so a re-run rebuilds it exactly)")
    _remove_ours(out)
    return False


def _remove_ours(out: Path) -> None:
    for name in OUR_FILES:
        (out / name).unlink(missing_ok=True)
    for split in SPLITS:
        shutil.rmtree(out / split, ignore_errors=True)


def run_prep(cfg: PrepConfig) -> dict:
    """Prepare a dataset; returns its manifest. On any error nothing is left behind."""
    files = discover(cfg.inputs)
    for f in files:
        detect_format(f)
    vocab = Vocabulary.default()
    created = prepare_output(cfg)
    out = Path(cfg.output)
    (out / INCOMPLETE_MARKER).write_text("prep started; a manifest.json appears only when it finished\n")
    pool = _Pool(cfg.workers)
    try:
        manifest = _prep(cfg, files, vocab, pool)
        pool.close()
    except BaseException:
        pool.close(abort=True)
        (shutil.rmtree(out, ignore_errors=True) if created else _remove_ours(out))
        raise
    (out / INCOMPLETE_MARKER).unlink()
    return manifest


def _prep(cfg: PrepConfig, files: list[Path], vocab: Vocabulary, pool: _Pool) -> dict:
    writers = {s: shards.SplitWriter(s, cfg, pool, vocab.token_dtype.name) for s in SPLITS}
    try:
        return _prep_into(cfg, files, vocab, pool, writers)
    except BaseException:
        for w in writers.values():  # close the shard being written, so it can be removed
            w.abandon()
        raise


def _prep_into(cfg: PrepConfig, files: list[Path], vocab: Vocabulary, pool: _Pool,
               writers: dict) -> dict:
    started = time.perf_counter()
    seen = SeenHashes() if cfg.dedup else None
    rejects = RejectSampler(cfg.rejects_per_reason)
    policy = RecordPolicy(**{**asdict(cfg.policy), "require_group": cfg.split.by == "group"})
    total_bytes = sum(f.stat().st_size for f in files)
    bar = _progress_bar(total_bytes, cfg.progress)
    inputs, tallies, n_records = [], [], 0
    for path in files:
        tally, raw = FileTally(str(path)), TrackedFile(path)
        in_flight: deque = deque()

        def drain_one():
            future, batch = in_flight.popleft()
            _account(future.result(), batch, tally, seen, writers, rejects, cfg.split)

        for batch in read_batches(path, cfg.input_spec, raw, cfg.batch_bytes):
            has_group = None if batch.groups is None else np.array([bool(g) for g in batch.groups])
            in_flight.append((pool.submit(process_batch, batch.data, batch.starts, batch.ends, has_group,
                                          policy, vocab, cfg.split.salt), batch))
            while len(in_flight) > pool.limit:
                drain_one()
            if cfg.progress:
                bar.update(raw.bytes_read - bar.n + sum(x["bytes"] for x in inputs))
                bar.set_postfix(records_per_s=f"{(n_records + tally.records) / bar.format_dict['elapsed']:,.0f}"
                                if bar.format_dict["elapsed"] else "-", refresh=False)
        while in_flight:
            drain_one()
        tally.check()
        digest = raw.hexdigest()
        inputs.append({"path": str(path), "format": detect_format(path), "bytes": path.stat().st_size,
                       "sha256": digest, **tally.to_dict()})
        tallies.append(tally)
        n_records += tally.records
        bar.update(sum(x["bytes"] for x in inputs) - bar.n)
    bar.close()
    split_summaries = {s: w.finish() for s, w in writers.items()}
    rejects.write(Path(cfg.output) / "rejects.jsonl")
    manifest = _manifest(cfg, vocab, inputs, tallies, split_summaries)
    manifest["run"] = {"workers": cfg.workers, "seconds": round(time.perf_counter() - started, 3)}
    write_atomic(Path(cfg.output) / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest


class _NoBar:
    n = 0

    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total_bytes: int, show: bool):
    if not show:  # tqdm's import alone costs ~50 ms: a quiet prep skips it
        return _NoBar()
    from tqdm import tqdm
    return tqdm(total=total_bytes, unit="B", unit_scale=True, desc="prep", file=sys.stderr, dynamic_ncols=True)


def _account(outcome, batch: RecordBatch, tally: FileTally, seen, writers, rejects,
             split: SplitPolicy) -> None:
    """Record a batch's outcomes in input order: the order that makes dedup deterministic."""
    reason = outcome.reason
    tally.records += len(reason)
    counts = np.bincount(reason[reason != KEPT], minlength=len(REJECT_REASONS))
    sampled = []
    for code in np.flatnonzero(counts).tolist():
        name = REJECT_REASONS[code]
        tally.rejected[name] += int(counts[code])
        sampled += [(i, name) for i in np.flatnonzero(reason == code)[:rejects.room(name)].tolist()]
        rejects.count(name, int(counts[code]))
    for i, name in sorted(sampled):  # input order, as the records came
        rejects.add(name, tally.path, int(batch.lines[i]), batch.ids[i], normalise(batch.sequence(i)))

    kept = np.flatnonzero(reason == KEPT)
    new = seen.add(outcome.digests) if seen is not None else np.ones(len(kept), dtype=bool)
    tally.duplicates += int(len(new) - new.sum())
    tally.kept += int(new.sum())
    if split.by == "sequence":
        split_of = split.assign_hashes(outcome.digests[new])
    else:
        split_of = np.array([SPLITS.index(split.assign(batch.groups[i].encode())) for i in kept[new]], dtype=np.int64)
    token_new = np.repeat(new, outcome.lengths)
    tokens, lengths, records = outcome.tokens[token_new], outcome.lengths[new], kept[new]
    for code, name in enumerate(SPLITS):
        mine = split_of == code
        if not mine.any():
            continue
        index = records[mine]
        writers[name].add(tokens[np.repeat(mine, lengths)], lengths[mine], [batch.ids[i] for i in index.tolist()],
                          batch.lines[index], None if batch.groups is None else [batch.groups[i] for i in index.tolist()],
                          tally.path)


def _manifest(cfg, vocab, inputs, tallies, split_summaries) -> dict:
    from importlib import metadata

    import numpy
    import zstandard

    from helm_scale import __version__
    tree = helm_tree(vocab)
    return {
        "format": FORMAT,
        "vocabulary": vocab.to_dict(), "vocabulary_fingerprint": vocab.fingerprint,
        "tree": tree.to_dict(), "tree_fingerprint": tree.fingerprint,
        "token_dtype": vocab.token_dtype.name,
        "token_layout": "codon ids only, no <cls>/<eos>: loaders add the specials",
        "settings": cfg.settings(),
        "inputs": inputs, "totals": totals(tallies), "splits": split_summaries,
        "rejects_file": "rejects.jsonl",
        "versions": {"helm_scale": __version__, "python": platform.python_version(),
                     "numpy": numpy.__version__, "zstandard": zstandard.__version__,
                     # the version without the import: webdataset imports torch (seconds)
                     "webdataset": metadata.version("webdataset")},
    }


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().rstrip("ib").rstrip("b")
    try:
        return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 64MB, 512k, 1G)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="files, directories or globs (quote globs)")
    p.add_argument("-o", "--output", required=True, help="output dataset directory (new or empty)")
    g = p.add_argument_group("tabular inputs (CSV, TSV, OAS)")
    g.add_argument("--column", help="name of the sequence column")
    g.add_argument("--id-column", help="name of the record id column (default: row number)")
    g.add_argument("--group-column", help="column with a group key (gene id, clone id) for --split-by group")
    p.add_argument("--group-regex", help="FASTA: regex on the header whose first group is the group key")
    g = p.add_argument_group("record policy")
    g.add_argument("--frame", choices=("orf", "trim"), default="orf",
                   help="orf: require ATG ... stop in frame (default); trim: read from the first "
                        "base and drop trailing bases (for antibody V(D)J and other partial CDS)")
    g.add_argument("--min-codons", type=int, default=10, help="shortest kept sequence (default 10)")
    g.add_argument("--max-codons", type=int, default=None, help="longest kept sequence (default: no limit)")
    g.add_argument("--max-ambiguous-codons", type=int, default=0,
                   help="codons with IUPAC codes (N, R, ...) allowed per sequence, as <unk> (default 0)")
    g.add_argument("--no-dedup", action="store_true", help="keep exact duplicates")
    g = p.add_argument_group("splits")
    g.add_argument("--split-by", choices=("sequence", "group"), default="sequence",
                   help="hash the sequence or the group key to pick the split (default sequence)")
    g.add_argument("--val-fraction", type=float, default=0.01)
    g.add_argument("--test-fraction", type=float, default=0.01)
    g.add_argument("--split-seed", type=int, default=0)
    g = p.add_argument_group("output and execution")
    g.add_argument("--shard-size", type=_size, default="128MB",
                   help="target shard size on disk (default 128MB)")
    g.add_argument("--chunk-size", type=_size, default=str(DEFAULT_CHUNK_BYTES),
                   help="tokens per tar member before compression: the unit the loader "
                        "decompresses (default 1MiB)")
    g.add_argument("--zstd-level", type=int, default=DEFAULT_ZSTD_LEVEL,
                   help=f"zstd level of every member (default {DEFAULT_ZSTD_LEVEL}); decompression speed "
                        "hardly depends on it")
    g.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: cores)")
    g.add_argument("--rejects-per-reason", type=int, default=20, help="rejects sampled to rejects.jsonl")
    g.add_argument("--overwrite", action="store_true", help="replace a finished or interrupted dataset")
    g.add_argument("--quiet", action="store_true", help="no progress bar and no summary")


def config_from_args(args) -> PrepConfig:
    return PrepConfig(
        inputs=args.inputs, output=args.output,
        input_spec=InputSpec(args.column, args.id_column, args.group_column, args.group_regex),
        policy=RecordPolicy(args.frame, args.min_codons, args.max_codons, args.max_ambiguous_codons),
        split=SplitPolicy(args.split_by, args.val_fraction, args.test_fraction, args.split_seed),
        dedup=not args.no_dedup, shard_bytes=args.shard_size,
        chunk_bytes=args.chunk_size, zstd_level=args.zstd_level,
        workers=args.workers, rejects_per_reason=args.rejects_per_reason,
        overwrite=args.overwrite, progress=not args.quiet)


def run(args) -> int:
    try:
        cfg = config_from_args(args)
        started = time.perf_counter()
        manifest = run_prep(cfg)
    except (InputError, ValueError, re.error) as e:  # bad input or settings, not a bug
        print(f"helm-scale prep: error: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        input_bytes = sum(i["bytes"] for i in manifest["inputs"])
        print(format_summary(manifest, time.perf_counter() - started, input_bytes))
        print(f"\nwrote {cfg.output}/{MANIFEST}; check it any time with: helm-scale verify {cfg.output}")
    return 0
