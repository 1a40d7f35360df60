"""Checkpoint directories on disk: atomic commit, the ``latest`` pointer, checksums,
verification with fallback, retention. Pure filesystem; rank 0 calls the writing parts.

    RUN/checkpoints/step-00000300/      one committed checkpoint
        meta.json                       written last: step, loader state, layout, config,
                                        vocabulary, tree, versions, and size + sha256 of
                                        every other file in the directory
        model/ | deepspeed/ | rng/      what the engine (Engine.save) and ranks wrote
    RUN/checkpoints/.staging-step-N/    a save in progress, renamed when complete
    RUN/checkpoints/latest              "step-00000300", replaced atomically after the rename

A directory is named ``step-N`` only once everything in it, meta.json included, is on
disk, so a crash mid-save leaves a staging directory the next save removes. Loading
verifies candidates newest first and falls back past any that is truncated or corrupt.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from helm_scale.durable import commit_dir, sha256_file, write_atomic

FORMAT = "helm-scale-checkpoint/1"
META = "meta.json"
LATEST = "latest"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


class CheckpointStore:
    def __init__(self, root):
        self.root = Path(root)

    @staticmethod
    def dir_name(step: int) -> str:
        return f"step-{step:08d}"

    def path(self, step: int) -> Path:
        return self.root / self.dir_name(step)

    def staging(self, step: int) -> Path:
        return self.root / f".staging-{self.dir_name(step)}"

    def begin(self, step: int) -> Path:
        """Rank 0, before a save: an empty staging directory (a crashed save's is removed)."""
        staging = self.staging(step)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        return staging

    def commit(self, step: int, meta: dict) -> Path:
        """Rank 0, after every rank wrote its part: checksum, meta.json, rename, pointer."""
        staging = self.staging(step)
        files = {str(path.relative_to(staging)): {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
                 for path in sorted(p for p in staging.rglob("*") if p.is_file())}
        write_atomic(staging / META, json.dumps({"format": FORMAT, **meta, "files": files}, indent=1) + "\n")
        # replace: the same step saved again (e.g. a signal right after an interval save)
        final = commit_dir(staging, self.path(step), replace=True)
        write_atomic(self.root / LATEST, self.dir_name(step) + "\n")
        return final

    def steps(self) -> list[int]:
        """Committed checkpoints (not yet verified), oldest first."""
        if not self.root.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.root.iterdir() if (m := _STEP_DIR.match(p.name)))

    def read_meta(self, step: int) -> dict:
        return json.loads((self.path(step) / META).read_text())

    def problems(self, step: int, checksums: bool = True) -> list[str]:
        """What is wrong with a committed checkpoint; empty if it is good."""
        root = self.path(step)
        try:
            meta = self.read_meta(step)
        except (OSError, ValueError) as e:
            return [f"{META} unreadable: {e}"]
        if meta.get("format") != FORMAT or meta.get("step") != step:
            return [f"{META} has format {meta.get('format')!r} and step {meta.get('step')!r}"]
        found = []
        for name, want in meta["files"].items():
            path = root / name
            if not path.is_file():
                found.append(f"{name} is missing")
            elif path.stat().st_size != want["bytes"]:
                found.append(f"{name} has {path.stat().st_size} bytes, expected {want['bytes']} (truncated?)")
            elif checksums and sha256_file(path) != want["sha256"]:
                found.append(f"{name} does not match its sha256 (corrupted)")
        return found

    def newest_good(self, checksums: bool = True, report=print) -> int | None:
        """The newest checkpoint that verifies; each bad one on the way is reported and skipped."""
        for step in reversed(self.steps()):
            found = self.problems(step, checksums)
            if not found:
                return step
            report(f"checkpoint {self.path(step)} is damaged and skipped: " + "; ".join(found[:3]))
        return None

    def prune(self, keep_last: int, keep_every: int = 0, protect: int | None = None) -> list[int]:
        """Rank 0: delete all but the newest ``keep_last`` and every ``keep_every``-th step
        (and ``protect``, the one just loaded or saved). Returns the deleted steps."""
        steps = self.steps()
        keep = set(steps[-keep_last:]) if keep_last > 0 else set()
        keep |= {s for s in steps if keep_every and s % keep_every == 0}
        keep |= {protect} if protect is not None else set()
        deleted = [s for s in steps if s not in keep]
        for step in deleted:
            shutil.rmtree(self.path(step), ignore_errors=True)
        return deleted
