"""The training job's configuration: typed sections, loaded from YAML (``configs/``) with
dotted overrides, and validated as a whole before any process group starts.

    cfg = load_train_config("configs/tiny.yaml", ["data.dataset_dir=demo/shards"])
    cfg.check(world_size=2)      # raises ConfigError naming what to change

No torch here, nor in the section types: the launcher loads a job with this same loader
on a machine without torch.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from helm_scale.codon import Vocabulary
from helm_scale.config_io import ConfigError, load_config
from helm_scale.data.config import DataConfig
from helm_scale.losses import LossConfig
from helm_scale.models.config import PLAIN_ONLY, ModelConfig
from helm_scale.parallel import OptimizerConfig, ParallelConfig
from helm_scale.shard_format import MANIFEST, read_manifest


@dataclass(frozen=True)
class ScheduleConfig:
    """Linear warm-up to optim.lr, then cosine decay to min_lr at max_steps (per optimizer step)."""

    max_steps: int = 1000
    warmup_steps: int = 100
    min_lr: float = 1e-5

    def __post_init__(self):
        if self.max_steps < 1 or not 0 <= self.warmup_steps <= self.max_steps or self.min_lr < 0:
            raise ValueError(f"need max_steps >= 1, 0 <= warmup_steps <= max_steps, min_lr >= 0; got "
                             f"max_steps={self.max_steps}, warmup_steps={self.warmup_steps}, min_lr={self.min_lr}")


@dataclass(frozen=True)
class RunConfig:
    run_dir: str = "runs/default"
    log_interval: int = 10            # optimizer steps between console / TensorBoard lines
    eval_interval: int = 100          # 0: evaluate only at the end
    eval_batches: int = 20            # micro-batches per rank per evaluation
    tensorboard: bool = True
    peak_tflops_per_device: float | None = None  # for MFU; None: known GPUs only
    checkpoint_interval: int = 1000   # optimizer steps between checkpoints; 0: only at the end
    keep_last: int = 2                # checkpoints kept, plus every keep_every-th step
    keep_every: int = 0
    resume: str = "auto"              # "auto": newest good checkpoint in run_dir, else fresh;
                                      # "none"; or a run directory / checkpoint directory
    verify_checksums: bool = True     # sha256 of every file before resuming (sizes always)

    def __post_init__(self):
        if not self.run_dir:
            raise ValueError("run_dir must be a non-empty path")
        if self.log_interval < 1 or self.eval_interval < 0 or self.eval_batches < 1:
            raise ValueError(f"need log_interval >= 1, eval_interval >= 0, eval_batches >= 1; got "
                             f"{self.log_interval}, {self.eval_interval}, {self.eval_batches}")
        if self.checkpoint_interval < 0 or self.keep_last < 1 or self.keep_every < 0:
            raise ValueError(f"need checkpoint_interval >= 0, keep_last >= 1, keep_every >= 0; got "
                             f"{self.checkpoint_interval}, {self.keep_last}, {self.keep_every}")


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    optim: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def check(self, world_size: int) -> int:
        """Validate the whole job for ``world_size`` processes; returns the DP size."""
        vocab = Vocabulary.default()
        tp = self.parallel.tensor_parallel
        if self.model.vocab_size != len(vocab):
            raise ConfigError(f"model.vocab_size is {self.model.vocab_size} but the codon vocabulary "
                              f"has {len(vocab)} tokens")
        try:
            self.model.validate_for_tp(tp)
        except ValueError as e:
            raise ConfigError(f"model: {e}") from None
        if world_size % tp:
            raise ConfigError(f"world size {world_size} is not a multiple of parallel.tensor_parallel "
                              f"{tp} (world size = TP x DP)")
        wanted = "causal" if self.data.objective == "clm" else "bidirectional"
        if self.model.attention != wanted:
            raise ConfigError(f"data.objective {self.data.objective} needs model.attention={wanted}")
        if self.model.arch in PLAIN_ONLY and self.data.pack:
            raise ConfigError(f"model.arch {self.model.arch} cannot take packed rows (its state would flow "
                              "from one sequence into the next): set data.pack=false")
        if self.data.seq_len > self.model.max_seq_len:
            raise ConfigError(f"data.seq_len {self.data.seq_len} exceeds model.max_seq_len "
                              f"{self.model.max_seq_len}")
        if not self.data.dataset_dir:
            raise ConfigError("data.dataset_dir is not set (a directory written by helm-scale prep)")
        if not (Path(self.data.dataset_dir) / MANIFEST).is_file():
            raise ConfigError(f"data.dataset_dir {self.data.dataset_dir} has no {MANIFEST}: "
                              "run helm-scale prep first")
        try:  # e.g. an older shard format: say how to rebuild it before any process starts
            read_manifest(self.data.dataset_dir)
        except ValueError as e:
            raise ConfigError(f"data.dataset_dir: {e}") from None
        if self.run.resume not in ("auto", "none") and not Path(self.run.resume).exists():
            raise ConfigError(f"run.resume={self.run.resume!r} is neither auto, none nor an existing "
                              "run or checkpoint directory")
        if self.parallel.sequence_parallel and self.data.seq_len % tp:
            raise ConfigError(f"sequence_parallel needs data.seq_len divisible by TP {tp}")
        if self.parallel.sequence_parallel and self.data.pad_to_multiple_of % tp:
            raise ConfigError(f"sequence_parallel needs data.pad_to_multiple_of divisible by TP {tp}: "
                              "every batch's length must split evenly across the TP ranks")
        dp = world_size // tp
        wanted_batch = self.data.global_batch_size
        if wanted_batch is not None and wanted_batch != self.global_batch_size(dp):
            raise ConfigError(
                f"data.global_batch_size {wanted_batch} != micro_batch_size {self.data.micro_batch_size} x "
                f"accumulation_steps {self.parallel.accumulation_steps} x DP {dp} = {self.global_batch_size(dp)}")
        return dp

    def global_batch_size(self, dp_size: int) -> int:
        """Rows per optimizer step: micro batch x accumulation x data-parallel size."""
        return self.data.micro_batch_size * self.parallel.accumulation_steps * dp_size


def load_train_config(path: str | None, overrides: list[str] = ()) -> TrainConfig:
    return load_config(TrainConfig, path, overrides)
