"""Intrinsic evaluation of an export on held-out shards, CLM or MLM.

    evaluate_intrinsic(exported, shard_dir, split="test", max_batches=None,
                       micro_batch_size=16, seq_len=None, progress=True) -> dict

The batches are the training loader's (``LoaderConfig.from_data`` of the export's data
section, ``for_evaluation``: manifest order; unpacked rows seq_len wide, MLM masks from
the training seed, dp_rank 0 of 1) and the losses are
the trainer's (``build_loss(config.loss)`` for the training objective with its per-level
HXE terms, and plain cross-entropy for perplexity), run on one device with no process
group. Every sample of the split is seen once: the loader drops an epoch's last partial
batch, so the remainder is read by a second loader of micro-batch 1 resumed where the
first stopped. Rows longer than ``seq_len`` (default: the training data.seq_len) are cut
as in training.

Returned keys: loss (training objective), cross_entropy and perplexity (true codon
cross-entropy per target token, <eos> included), codon_accuracy, synonymous_accuracy
(same amino acid; stops are synonyms), start_stop_accuracy, level{d}_term (per-level HXE
terms of the training loss), tokens, and for CLM per_nucleotide_perplexity =
exp(total NLL / (3 x codon targets)); plus sequences, split, objective, step.
"""
from __future__ import annotations

import math
from dataclasses import replace

import torch
from tqdm.auto import tqdm

from helm_scale.evaluate.sequences import EvalInputError


def _loaders(cfg, dataset_dir: str, split: str, micro_batch_size: int, seq_len: int):
    from helm_scale.data import LoaderConfig, build_loader
    # Rows seq_len wide whatever training's pad_to_multiple_of: cutting the padding
    # columns moves the metrics in their 8th digit, and they should not depend on it.
    base = LoaderConfig.from_data(cfg.data, cfg.parallel.seed, dataset_dir=str(dataset_dir), seq_len=seq_len,
                                  pack=False, pad_to_multiple_of=0).for_evaluation(split)
    try:
        rows = build_loader(replace(base, micro_batch_size=1)).rows_in_epoch(0)
        first = build_loader(replace(base, micro_batch_size=min(micro_batch_size, rows)))
    except (FileNotFoundError, ValueError) as e:
        raise EvalInputError(str(e)) from None
    loaders = [first]
    consumed = first.steps_in_epoch(0) * first.global_batch_rows
    if consumed < rows:
        rest = build_loader(replace(base, micro_batch_size=1))
        state = rest.state_dict()
        rest.load_state_dict({**state, "rows_consumed": consumed})
        loaders.append(rest)
    return loaders, rows


@torch.no_grad()
def evaluate_intrinsic(exported, shard_dir, split: str = "test", max_batches: int | None = None,
                       micro_batch_size: int = 16, seq_len: int | None = None,
                       progress: bool = True) -> dict:
    from helm_scale.data import model_inputs
    from helm_scale.losses import LossConfig, build_loss, metric_means

    cfg = exported.config
    objective = cfg.data.objective
    seq_len = seq_len or cfg.data.seq_len
    if seq_len > cfg.model.max_seq_len:
        raise EvalInputError(f"seq_len {seq_len} exceeds the model's max_seq_len {cfg.model.max_seq_len}")
    if max_batches is not None and max_batches < 1:
        raise EvalInputError(f"max_batches must be >= 1, got {max_batches}")
    padded = cfg.model.padded_vocab_size
    loss_fn = build_loss(cfg.loss, exported.vocab, padded)
    xe_fn = build_loss(LossConfig(name="xe"), exported.vocab, padded)
    loaders, rows = _loaders(cfg, shard_dir, split, micro_batch_size, seq_len)
    total = sum(len(lo) for lo in loaders)
    if max_batches is not None:
        total = min(total, max_batches)
    device = next(exported.model.parameters()).device
    sums, xe, sequences, codon_targets, done = {}, {}, 0, 0, 0
    bar = tqdm(total=total, desc=f"eval {split}", unit="batch", disable=not progress)
    for loader in loaders:
        for batch in loader:
            if done == total:
                break
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = exported.model(**model_inputs(batch, mask_padding=objective == "mlm")).float()
            labels, mask = batch["labels"], batch["loss_mask"]
            for acc, fn in ((sums, loss_fn), (xe, xe_fn)):
                for k, v in fn(logits, labels, mask).sums.items():
                    acc[k] = acc.get(k, 0.0) + v.double()
            sequences += int((batch["position_ids"] == 0).logical_and(batch["segment_ids"] > 0).sum())
            codon_targets += int((mask & (labels != exported.vocab.eos_id)).sum())
            done += 1
            bar.update(1)
    bar.close()
    if not sums:
        raise EvalInputError(f"split {split!r} gave no batch")
    out = {k: float(v) for k, v in metric_means(sums).items()}
    out["cross_entropy"] = float(metric_means(xe)["loss"])
    out["perplexity"] = math.exp(min(out["cross_entropy"], 50.0))
    if objective == "clm" and codon_targets:
        out["per_nucleotide_perplexity"] = math.exp(min(float(xe["loss"]) / (3 * codon_targets), 50.0))
    out.update(sequences=sequences, split_sequences=rows, batches=done, split=split, objective=objective,
               loss_name=cfg.loss.name, step=exported.step, seq_len=seq_len)
    return out
