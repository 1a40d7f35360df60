"""What a training checkpoint is and when it may be resumed: the trainer's one entry point.

    ckpt = Checkpointer(cfg, state, report)          # cfg: TrainConfig, state: ParallelState
    point = ckpt.find()                              # collective; per cfg.run.resume
    ckpt.check_resumable(point)                      # raises ResumeError saying what to do
    engine = build_engine(...)                       # after: a refused resume builds nothing
    meta, rank_extra = ckpt.load(point, engine)      # weights, optimizer, RNG
    ckpt.save(step, engine, loader_state, trainer_state, rank_extra)   # collective, atomic

Resume rules. The codon vocabulary, the model settings and the backend must match. What
else may change is the engine's to say (Engine.resume_route: DDP reshards through DCP
to any DP and TP size; DeepSpeed keeps TP, ZeRO stage and precision, and goes through its
universal checkpoint at another DP size). Same layout: everything is restored, RNG
included, bit for bit. Per-rank RNG streams are restored only at the same layout;
otherwise every rank is reseeded from (seed, step) and the log says so. The loader state
counts rows of the global order, so data continues at any DP size. The engine writes and
reads its own state (Engine.save / load); this module never asks which engine it has.
"""
from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from helm_scale.checkpoint import rng
from helm_scale.checkpoint.store import CheckpointStore
from helm_scale.codon import Vocabulary, build_tree
from helm_scale.config_io import to_dict
from helm_scale.parallel.backends import engine_class

CHECKPOINTS = "checkpoints"


class ResumeError(RuntimeError):
    """A checkpoint that cannot be resumed with this job's settings; says what to change."""


@dataclass(frozen=True)
class ResumePoint:
    directory: Path
    step: int
    meta: dict
    universal: bool = False  # Engine.load through the layout-free form (Engine.resume_route)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    found = {"python": platform.python_version()}
    for package in ("helm_scale", "torch", "deepspeed", "megatron-core", "webdataset"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


class Checkpointer:
    def __init__(self, cfg, state, report=print):
        self.cfg, self.state, self.report = cfg, state, report
        self.store = CheckpointStore(Path(cfg.run.run_dir) / CHECKPOINTS)

    def layout(self) -> dict:
        p = self.cfg.parallel
        return {"world_size": self.state.world_size, "dp": self.state.dp_size, "tp": self.state.tp_size,
                "backend": p.backend, "zero_stage": p.zero_stage, "precision": p.precision}

    # ---- finding ------------------------------------------------------------------------

    def _store_for(self, resume: str) -> CheckpointStore:
        if resume == "auto":
            return self.store
        path = Path(resume)
        if (path / CHECKPOINTS).is_dir():
            return CheckpointStore(path / CHECKPOINTS)
        return CheckpointStore(path)

    def _choose(self) -> tuple[str, int]:
        """Rank 0: (checkpoints root, step), step -1 for a fresh start."""
        resume = self.cfg.run.resume
        if resume == "none":
            return "", -1
        path = Path(resume)
        if resume != "auto" and (path / "meta.json").is_file():  # one checkpoint named directly
            store, steps = CheckpointStore(path.parent), [int(path.name.split("-")[-1])]
            found = store.problems(steps[0], self.cfg.run.verify_checksums)
            if found:
                raise ResumeError(f"run.resume={resume} is damaged: " + "; ".join(found[:3]))
            return str(store.root), steps[0]
        store = self._store_for(resume)
        if resume != "auto" and not store.steps():
            raise ResumeError(f"run.resume={resume}: no checkpoints there (expected RUN_DIR or RUN_DIR/{CHECKPOINTS}/step-N)")
        step = store.newest_good(self.cfg.run.verify_checksums, self.report)
        if step is None and store.steps():
            if resume != "auto":
                raise ResumeError(f"run.resume={resume}: every checkpoint there is damaged")
            self.report(f"no good checkpoint in {store.root}: starting fresh")
        return str(store.root), -1 if step is None else step

    def find(self) -> ResumePoint | None:
        """Collective: rank 0 verifies, every rank gets its choice."""
        choice = [None]
        if self.state.is_main:
            try:
                choice = [self._choose()]
            except ResumeError as e:
                choice = [str(e)]
        dist.broadcast_object_list(choice, src=0)  # between live processes, never from disk
        if isinstance(choice[0], str):
            raise ResumeError(choice[0])
        root, step = choice[0]
        if step < 0:
            return None
        store = CheckpointStore(root)
        return ResumePoint(store.path(step), step, store.read_meta(step))

    # ---- compatibility ------------------------------------------------------------------

    def check_resumable(self, point: ResumePoint) -> ResumePoint:
        """Raise ResumeError unless this job can continue ``point``; returns it with the
        loading route decided (universal or not)."""
        meta, cfg, now = point.meta, self.cfg, self.layout()
        was = meta["layout"]
        if meta["vocab_fingerprint"] != Vocabulary.default().fingerprint:
            raise ResumeError("the checkpoint was trained with another codon vocabulary")
        differ = {k: (v, getattr(cfg.model, k)) for k, v in meta["config"]["model"].items()
                  if getattr(cfg.model, k) != (tuple(v) if isinstance(v, list) else v)}
        if differ:
            raise ResumeError(f"the model differs from the checkpoint's (checkpoint, now): {differ}; "
                              f"resume with the same model.* settings (see {point.directory}/meta.json)")
        if was["backend"] != now["backend"]:
            raise ResumeError(f"the checkpoint was written by parallel.backend={was['backend']}; "
                              f"resume with parallel.backend={was['backend']}")
        try:
            universal = engine_class(now["backend"]).resume_route(was, now)
        except ValueError as e:
            raise ResumeError(str(e)) from None
        if was["dp"] != now["dp"] or was["tp"] != now["tp"]:
            self.report(f"resuming step {point.step} saved at TP {was['tp']} x DP {was['dp']} on "
                        f"TP {now['tp']} x DP {now['dp']}" + (" via the universal checkpoint" if universal else ""))
        gb_was, gb_now = meta["global_batch_size"], cfg.global_batch_size(self.state.dp_size)
        if gb_was != gb_now:
            self.report(f"warning: global batch {gb_now} rows differs from the checkpoint's {gb_was}; "
                        f"keep it with parallel.accumulation_steps or data.micro_batch_size")
        return ResumePoint(point.directory, point.step, meta, universal)

    # ---- loading and saving -------------------------------------------------------------

    def load(self, point: ResumePoint, engine) -> tuple[dict, dict]:
        """Collective: weights and optimizer state into ``engine``, RNG streams. Returns the
        checkpoint's meta and this rank's extras ({} when the layout changed)."""
        started = time.perf_counter()
        engine.load(point.directory, point.universal)
        rank_extra = {}
        if point.meta["layout"] == self.layout():
            rank_extra = rng.load(point.directory, self.state.rank)
        else:
            from helm_scale.parallel import set_seed
            set_seed(self.cfg.parallel.seed + point.step)
            self.report("the layout changed: random streams reseeded from (seed, step), "
                        "so dropout masks differ from an uninterrupted run")
        dist.barrier()
        self.report(f"resumed from {point.directory} (step {point.step}) in {time.perf_counter() - started:.1f} s")
        return point.meta, rank_extra

    def save(self, step: int, engine, loader_state: dict, trainer_state: dict,
             rank_extra: dict | None = None) -> Path:
        """Collective. Returns the committed directory."""
        started = time.perf_counter()
        if self.state.is_main:
            self.store.begin(step)
        dist.barrier()
        staging = self.store.staging(step)
        rng.save(staging, self.state.rank, rank_extra)
        engine.save(staging)
        dist.barrier()  # every rank's part is on disk before rank 0 checksums and commits
        final = self.store.path(step)
        if self.state.is_main:
            vocab = Vocabulary.default()
            cfg = self.cfg
            tree = build_tree(vocab, cfg.loss.tree, cfg.loss.tree_seed)
            meta = {"step": step, "finished": step >= cfg.schedule.max_steps, "layout": self.layout(),
                    "global_batch_size": cfg.global_batch_size(self.state.dp_size), "loader": loader_state,
                    "trainer": trainer_state, "config": to_dict(cfg), "vocab": vocab.to_dict(),
                    "vocab_fingerprint": vocab.fingerprint, "tree": tree.to_dict(),
                    "tree_fingerprint": tree.fingerprint, "versions": _versions(),
                    "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv}
            self.store.commit(step, meta)
            deleted = self.store.prune(cfg.run.keep_last, cfg.run.keep_every, protect=step)
            self.report(f"checkpoint {final} saved in {time.perf_counter() - started:.1f} s"
                        + (f"; removed steps {deleted}" if deleted else ""))
        dist.barrier()
        return final


def full_weights(directory) -> dict[str, torch.Tensor]:
    """Full fp32 weights of one checkpoint directory, read in this process alone."""
    import json
    directory = Path(directory)
    layout = json.loads((directory / "meta.json").read_text())["layout"]
    return engine_class(layout["backend"]).read_full_weights(directory, layout)
