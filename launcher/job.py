"""What the launcher needs to know about a training job, read without the trainer.

The trainer's typed config (helm_scale.train_config) imports torch through the model and
loss modules, and the launcher must run where torch is absent (a laptop, a login node).
So the YAML is read here with pyyaml, the user's overrides are applied the same way the
trainer applies them (helm_scale.config_io imports only yaml), and only the few fields
that shape the launch are taken. The full config is still validated by the trainer.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from helm_scale.config_io import ConfigError, apply_overrides

# Mirrors RunConfig.run_dir's default in helm_scale/train_config.py.
DEFAULT_RUN_DIR = "runs/default"


class LaunchError(ValueError):
    """Bad launch input: reported as one line, exit code 2, before anything starts."""


@dataclass(frozen=True)
class Job:
    config: str                      # the YAML path, as given
    overrides: tuple[str, ...]       # section.key=value, passed on to the trainer unchanged
    run_dir: str
    tensor_parallel: int
    timeout_s: float | None          # parallel.timeout_s when the config sets it

    def check_world(self, world_size: int, layout: str) -> None:
        """The one layout rule that can be checked without the trainer: TP divides the world."""
        if world_size < 1:
            raise LaunchError(f"{layout} gives no processes")
        if world_size % self.tensor_parallel:
            raise LaunchError(
                f"{layout} = {world_size} processes is not a multiple of parallel.tensor_parallel "
                f"{self.tensor_parallel} (world size = TP x DP)")


def read_job(config: str, overrides: list[str] | tuple[str, ...] = ()) -> Job:
    path = Path(config)
    if not path.is_file():
        raise LaunchError(f"config file {config} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise LaunchError(f"{config} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise LaunchError(f"{config}: the top level must be a mapping of sections")
    try:
        data = apply_overrides(data, list(overrides))
    except ConfigError as e:
        raise LaunchError(str(e)) from None
    parallel, run = _section(data, "parallel"), _section(data, "run")
    tp = parallel.get("tensor_parallel", 1)
    if type(tp) is not int or tp < 1:
        raise LaunchError(f"parallel.tensor_parallel must be an int >= 1, got {tp!r}")
    run_dir = run.get("run_dir", DEFAULT_RUN_DIR)
    if not isinstance(run_dir, str) or not run_dir:
        raise LaunchError(f"run.run_dir must be a non-empty string, got {run_dir!r}")
    timeout = parallel.get("timeout_s")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise LaunchError(f"parallel.timeout_s must be a number > 0, got {timeout!r}")
    return Job(config=config, overrides=tuple(overrides), run_dir=run_dir, tensor_parallel=tp,
               timeout_s=None if timeout is None else float(timeout))


def _section(data: dict, name: str) -> dict:
    section = data.get(name) or {}
    if not isinstance(section, dict):
        raise LaunchError(f"{name} must be a section (a mapping), got {section!r}")
    return section
