"""Checkpoints: exact, atomic, verified, elastic (see manager.py for the rules).

  Checkpointer(cfg, state, report)   find() / check_resumable(point) / load(point, engine) / save(...)
  ResumePoint, ResumeError
  SaveOnSignal()                     SIGTERM / SIGUSR1 -> save at the step boundary, then exit
  CheckpointStore(root)              the directories: commit, latest, verify, prune
  full_weights(checkpoint_dir)       full fp32 weights in one process (for export)
"""
from helm_scale.checkpoint.manager import (
    Checkpointer,
    ResumeError,
    ResumePoint,
    full_weights,
)
from helm_scale.checkpoint.signals import SaveOnSignal
from helm_scale.checkpoint.store import CheckpointStore

__all__ = ["CheckpointStore", "Checkpointer", "ResumeError", "ResumePoint", "SaveOnSignal", "full_weights"]
