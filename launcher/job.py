"""What the launcher needs to know about a training job: the trainer's own typed config.

helm_scale.train_config and its section types import no torch (nor the trainer), so the
launcher loads the job exactly as the trainer will (defaults, overrides and each
section's checks included) on a machine without torch: a laptop, a login node. The checks
that need the dataset or the world size stay with the trainer (TrainConfig.check).
"""
from __future__ import annotations

from dataclasses import dataclass

from helm_scale.config_io import ConfigError
from helm_scale.train_config import TrainConfig, load_train_config


class LaunchError(ValueError):
    """Bad launch input: reported as one line, exit code 2, before anything starts."""


@dataclass(frozen=True)
class Job:
    config: str                      # the YAML path, as given
    overrides: tuple[str, ...]       # section.key=value, passed on to the trainer unchanged
    train: TrainConfig               # what the trainer will load from them

    @property
    def run_dir(self) -> str:
        return self.train.run.run_dir

    @property
    def tensor_parallel(self) -> int:
        return self.train.parallel.tensor_parallel

    def check_world(self, world_size: int, layout: str) -> None:
        """The one layout rule that can be checked without the trainer: TP divides the world."""
        if world_size < 1:
            raise LaunchError(f"{layout} gives no processes")
        if world_size % self.tensor_parallel:
            raise LaunchError(
                f"{layout} = {world_size} processes is not a multiple of parallel.tensor_parallel "
                f"{self.tensor_parallel} (world size = TP x DP)")


def read_job(config: str, overrides: list[str] | tuple[str, ...] = ()) -> Job:
    try:
        train = load_train_config(config, list(overrides))
    except ConfigError as e:
        raise LaunchError(str(e)) from None
    return Job(config=config, overrides=tuple(overrides), train=train)
