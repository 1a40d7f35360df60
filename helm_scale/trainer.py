"""Train a HELM-style codon language model from prepared shards.

Run one process per device, e.g. on one machine with two processes:

    torchrun --nproc-per-node 2 -m helm_scale.cli train configs/tiny.yaml data.dataset_dir=demo/shards

Settings come from the YAML file and dotted overrides (``section.key=value``); the whole
job is validated before any process group starts, and the resolved configuration is
written to the run directory. The trainer composes the pieces and owns nothing of them:
the model comes from helm_scale.models.registry (the transformer's tensor parallelism is
in the network's layers: models.tp_transformer builds transformer.Transformer from
megatron-core's tensor-parallel layers); data parallelism, ZeRO, activation recompute and
compile are applied from outside the model (helm_scale.parallel); batches come from
helm_scale.data and the loss from helm_scale.losses, fed the model's vocab-parallel logits
directly.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from helm_scale.config_io import ConfigError, save_config
from helm_scale.data.batches import model_inputs
from helm_scale.losses import check_targets_in_vocabulary, global_token_count
from helm_scale.train_config import TrainConfig, load_train_config

if TYPE_CHECKING:  # the parallel package imports megatron-core: only when training starts
    from helm_scale.parallel import StepResult


def lr_at(step: int, peak: float, cfg) -> float:
    """Learning rate for optimizer step ``step`` (0-based): warm-up, then cosine to min_lr."""
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    span = max(cfg.max_steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    return cfg.min_lr + 0.5 * (peak - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def _to(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _add(total: dict, sums: dict) -> None:
    for k, v in sums.items():
        total[k] = total.get(k, 0.0) + v.double()


def optimizer_step(engine, loss_fn, batches: list[dict], state, pack: bool, objective: str,
                   pad_id: int) -> tuple[dict, StepResult]:
    """One optimizer step over this rank's micro-batches (on the device, targets checked).

    The objective is the mean over every loss-bearing token of the global batch (all
    micro-batches of all data-parallel ranks), as in Megatron-LM and torchtitan: each
    micro-batch contributes its loss sum over that global count, so a token weighs the same
    whatever micro-batch, rank or layout it lands in. The count needs every micro-batch of
    the step before the first backward: the caller hands them over together (a few KB of
    token ids each). Rescaling the accumulated gradients at the boundary instead would touch
    every gradient once more, after DDP's and ZeRO's bucketed reductions have run.
    Nothing here reads the device: the count is one all-reduce over DP, and the returned
    sums ("objective": this rank's share of the step objective, summing to it over DP;
    "input_tokens"; the loss's diagnostic sums) stay on the device until logged.
    Returns (sums, the engine's StepResult of the window's last micro-batch).
    """
    tokens = global_token_count([b["loss_mask"] for b in batches], state.dp_group)
    share = 1.0 / tokens.clamp_min(1.0)  # no target token anywhere: zero loss and gradient
    sums = {}
    for batch in batches:
        logits = engine(**model_inputs(batch, pack, mask_padding=objective == "mlm"))
        out = loss_fn(logits, batch["labels"], batch["loss_mask"], group=state.loss_group,
                      check_targets=False)
        engine.backward(out.loss_sum * share.to(out.loss_sum.dtype))
        # Called after every micro-batch (DeepSpeed counts its accumulation window in
        # step()); only the window's last call updates the weights.
        result = engine.step()
        _add(sums, {**out.sums, "objective": out.sums["loss"] * share,
                    "input_tokens": (batch["input_ids"] != pad_id).sum()})
    if not result.stepped:
        raise RuntimeError("the engine must step once per accumulation window")
    return sums, result


class Trainer:
    def __init__(self, cfg: TrainConfig):
        from helm_scale.checkpoint import Checkpointer
        from helm_scale.codon import Vocabulary
        from helm_scale.data import LoaderConfig, build_loader
        from helm_scale.losses import LossConfig, build_loss
        from helm_scale.models.registry import build_training_model, flops_per_token
        from helm_scale.observe import RunLogger, device_peak_tflops
        from helm_scale.parallel import build_engine, init_parallel

        self.cfg = cfg
        self.state = init_parallel(cfg.parallel)
        self.vocab = Vocabulary.default()
        self.run_dir = Path(cfg.run.run_dir)
        if self.state.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log = RunLogger(str(self.run_dir), self.state.is_main, cfg.run.tensorboard,
                             flops_per_token(cfg.model, cfg.data.seq_len), self.state.world_size,
                             device_peak_tflops(cfg.run.peak_tflops_per_device))
        # Decided before the engine exists: a checkpoint this job cannot resume fails first.
        self.checkpointer = Checkpointer(cfg, self.state, self.log.line)
        point = self.checkpointer.find()
        if point is not None:
            point = self.checkpointer.check_resumable(point)
        model = build_training_model(cfg.model, sequence_parallel=cfg.parallel.sequence_parallel)
        self.engine = build_engine(model, cfg.optim, cfg.parallel, self.state)
        self.loss_fn = build_loss(cfg.loss, self.vocab, cfg.model.padded_vocab_size)
        # True codon cross-entropy for perplexity, whatever the training objective.
        self.xe_fn = build_loss(LossConfig(name="xe"), self.vocab, cfg.model.padded_vocab_size)
        self.loader_cfg = LoaderConfig.from_data(cfg.data, cfg.parallel.seed)
        self.loader = build_loader(self.loader_cfg, self.state.dp_rank, self.state.dp_size)
        self.step, self.input_tokens, self.saved_step = 0, 0, None
        # The log window: device sums since the last log line, and its number of steps.
        self._batches, self._window, self._window_steps, self._data_seconds = None, {}, 0, 0.0
        if point is not None and point.step >= cfg.schedule.max_steps:
            self.step = point.step  # finished: fit() says so, nothing to load
        elif point is not None:
            meta, rank_extra = self.checkpointer.load(point, self.engine)
            self.loader.load_state_dict(meta["loader"])
            self.step = self.saved_step = meta["step"]
            self.input_tokens = meta["trainer"]["input_tokens"]
            # A checkpoint from before the window counted its steps holds per-micro-batch
            # sums without the objective: its partial window is dropped (the next log line
            # covers the steps after the resume only).
            if "window_steps" in rank_extra:
                self._window = {k: torch.as_tensor(v, device=self.state.device)
                                for k, v in rank_extra["window"].items()}
                self._window_steps = rank_extra["window_steps"]
        if self.state.is_main:
            save_config(cfg, self.run_dir / "config.yaml")

    def _next_batch(self) -> dict:
        """The loader yields the rest of an epoch per iteration; the next starts a new epoch.
        The time spent here is logged as the share of wall time waiting for data."""
        started = time.perf_counter()
        try:
            for _ in range(2):
                if self._batches is None:
                    self._batches = iter(self.loader)
                try:
                    batch = next(self._batches)
                except StopIteration:
                    self._batches = None
                    continue
                # On the host, where it costs no device sync (the loss's own check would).
                check_targets_in_vocabulary(batch["labels"], batch["loss_mask"], len(self.vocab))
                return _to(batch, self.state.device)
        finally:
            self._data_seconds += time.perf_counter() - started
        raise RuntimeError("the training split yields no batch: it is smaller than one global batch")

    def _reduce(self, sums: dict) -> dict:
        from helm_scale.losses.metrics import reduce_metric_sums
        return reduce_metric_sums({k: torch.as_tensor(v, dtype=torch.float64, device=self.state.device)
                                   for k, v in sums.items()}, self.state.dp_group)

    def train_step(self) -> tuple[dict, torch.Tensor | float | None]:
        """One optimizer step; returns its device sums and the gradient norm (see optimizer_step)."""
        cfg = self.cfg
        self.engine.set_lr(lr_at(self.step, cfg.optim.lr, cfg.schedule))
        self.engine.train()
        # The whole step's micro-batches first: the objective's denominator counts them all.
        batches = [self._next_batch() for _ in range(cfg.parallel.accumulation_steps)]
        sums, result = optimizer_step(self.engine, self.loss_fn, batches, self.state, cfg.data.pack,
                                      cfg.data.objective, self.vocab.pad_id)
        self.step += 1
        return sums, result.grad_norm

    @torch.no_grad()
    def evaluate(self) -> dict | None:
        """Loss, perplexity (true codon cross-entropy), per-level HXE terms and accuracies on
        the first eval_batches micro-batches per rank of the eval split, in manifest order."""
        from helm_scale.data import build_loader
        from helm_scale.losses.metrics import metric_means, perplexity
        try:
            loader = build_loader(self.loader_cfg.for_evaluation(self.cfg.data.eval_split),
                                  self.state.dp_rank, self.state.dp_size)
        except ValueError as e:  # e.g. a split smaller than one global batch
            self.log.line(f"eval skipped: {e}")
            return None
        self.engine.eval()
        sums, xe = {}, {}
        for i, batch in enumerate(loader):
            if i == self.cfg.run.eval_batches:
                break
            batch = _to(batch, self.state.device)
            data = self.cfg.data
            logits = self.engine(**model_inputs(batch, data.pack, mask_padding=data.objective == "mlm"))
            _add(xe, self.xe_fn(logits.float(), batch["labels"], batch["loss_mask"], group=self.state.loss_group).sums)
            _add(sums, self.loss_fn(logits, batch["labels"], batch["loss_mask"], group=self.state.loss_group).sums)
        self.engine.train()
        if not sums:
            return None
        metrics = {k: float(v) for k, v in metric_means(self._reduce(sums)).items()}
        xe_means = metric_means(self._reduce(xe))
        metrics["cross_entropy"] = float(xe_means["loss"])
        metrics["perplexity"] = perplexity(metrics["cross_entropy"])
        return metrics

    def save(self) -> None:
        """Collective: a checkpoint of this step (see helm_scale.checkpoint)."""
        self.checkpointer.save(self.step, self.engine, self.loader.state_dict(),
                               {"input_tokens": self.input_tokens},
                               {"window": self._window, "window_steps": self._window_steps})
        self.saved_step = self.step

    def _log_train(self, grad_norm) -> dict:
        from helm_scale.losses.metrics import metric_means
        cfg = self.cfg
        reduced = self._reduce(self._window)
        self.input_tokens += int(reduced["input_tokens"])
        metrics = {k: float(v) for k, v in metric_means(reduced).items()}
        # The optimised objective: per step the token mean over its global batch, averaged
        # over the window's steps (accuracies and level terms stay token means over the window).
        metrics["loss"] = float(reduced["objective"]) / self._window_steps
        metrics.update(self.log.throughput(self.input_tokens, self._data_seconds),
                       lr=lr_at(self.step - 1, cfg.optim.lr, cfg.schedule),
                       grad_norm=float("nan") if grad_norm is None else float(grad_norm))
        self.log.train_line(self.step, cfg.schedule.max_steps, metrics)
        self.log.scalars("train", metrics, self.step)
        self._window, self._window_steps, self._data_seconds = {}, 0, 0.0
        return metrics

    def fit(self) -> dict:
        """Train to schedule.max_steps from wherever the checkpoint left off. Returns the
        summary; ``summary["signal"]`` is set if a signal stopped the run after saving."""
        from helm_scale.checkpoint import SaveOnSignal
        from helm_scale.models.registry import num_parameters
        cfg, started = self.cfg, time.perf_counter()
        max_steps = cfg.schedule.max_steps
        dp, gb = self.state.dp_size, cfg.global_batch_size(self.state.dp_size)
        if self.step >= max_steps:
            self.log.line(f"run {self.run_dir} already finished: its checkpoint is at step {self.step} "
                          f"of schedule.max_steps {max_steps}; raise max_steps to train further")
            self.log.close()
            return {"steps": self.step, "already_finished": True}
        self.log.line(f"training {num_parameters(cfg.model):,} parameters | world {self.state.world_size} = "
                      f"TP {self.state.tp_size} x DP {dp} | {cfg.parallel.backend} zero {cfg.parallel.zero_stage} | "
                      f"global batch {gb} rows | {self.loader.steps_per_epoch:,} micro-steps per epoch"
                      + (f" | resuming at step {self.step}" if self.step else ""))
        on_signal = SaveOnSignal()
        last_train, last_eval, signum = {}, None, 0
        while self.step < max_steps:
            sums, grad_norm = self.train_step()
            _add(self._window, sums)
            self._window_steps += 1
            if self.step % cfg.run.log_interval == 0 or self.step == max_steps:
                last_train = self._log_train(grad_norm)
            if (cfg.run.eval_interval and self.step % cfg.run.eval_interval == 0) or self.step == max_steps:
                last_eval = self.evaluate()
                if last_eval:
                    self.log.eval_line(self.step, last_eval)
                    self.log.scalars("eval", last_eval, self.step)
            interval = cfg.run.checkpoint_interval
            if (interval and self.step % interval == 0) or self.step == max_steps:
                self.save()
            # Every step: a signal reaches the ranks at different steps, and a checkpoint is
            # collective, so all ranks must agree on the step that saves. It costs one 4-byte
            # all-reduce on the host (gloo; see SaveOnSignal): a network round trip, no
            # device sync, so the device keeps the queued work of this step.
            signum = on_signal.agreed()
            if signum:
                if self.saved_step != self.step:
                    self.save()
                self.log.line(f"signal {signum} received: saved step {self.step}, exiting; "
                              "run the same command again to continue")
                break
        summary = {"steps": self.step, "seconds": time.perf_counter() - started, "train": last_train,
                   "eval": last_eval, "tensorboard": str(self.log.tb_dir)}
        if signum:
            summary["signal"] = signum
        elif self.state.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
            self.log.line(f"done: {self.step} steps in {summary['seconds']:.1f} s; "
                          f"TensorBoard logs in {self.log.tb_dir} (tensorboard --logdir {self.log.tb_dir})")
        self.log.close()
        return summary


def _single_process_env() -> None:
    """Outside torchrun, behave as a world of one."""
    if "RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML file (see configs/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=3e-4 data.dataset_dir=DIR")


def run(args) -> int:
    import warnings
    # megatron-core warns at import that it falls back to torch kernels without
    # Transformer Engine / Apex: expected on CPU, noise on every rank.
    warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")
    try:
        cfg = load_train_config(args.config, args.overrides)
        cfg.check(int(os.environ.get("WORLD_SIZE", "1")))
    except ConfigError as e:
        print(f"helm-scale train: config error: {e}", file=sys.stderr)
        return 2
    _single_process_env()
    from helm_scale.checkpoint import ResumeError
    from helm_scale.parallel import shutdown
    from helm_scale.parallel.errors import collective_failure
    try:
        summary = Trainer(cfg).fit()
    except ResumeError as e:
        print(f"helm-scale train: cannot resume: {e}", file=sys.stderr)
        shutdown(2)
    except RuntimeError as e:  # a hung or dead peer: one line naming rank and operation
        line = collective_failure(e, int(os.environ["RANK"]), cfg.parallel.timeout_s)
        if line is None:
            raise
        print(line, file=sys.stderr, flush=True)
        os._exit(1)  # no barrier and no interpreter shutdown: a peer is gone or hung
    # barrier, flush, os._exit: avoids gloo's abort at interpreter exit. After a signal the
    # exit status says the run stopped early (128 + signal, as the shell reports it).
    shutdown(128 + summary["signal"] if "signal" in summary else 0)
    return 0
