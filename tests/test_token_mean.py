"""The training objective is the mean over every loss-bearing token of the global batch.

One global batch of 8 rows goes through the trainer's first optimizer step laid out as
1 process x 8 rows, 1 x (4 rows x 2 accumulation steps), 2 DP x 4, 2 DP x (2 x 2) and
TP 2 x DP 1, on DDP and DeepSpeed ZeRO; the gradient that step applies must equal (1e-6
relative, fp32) the gradient of the token mean over the 8 rows written by hand in plain
PyTorch (helm_scale.models.transformer, F.cross_entropy), whatever the layout, and the trainer's
logged loss must be that token mean. The batches make
micro-batches hold very different numbers of target tokens: CLM rows of 1-32 tokens
(padding), MLM (15% masked, one row far more), and packed rows (some full, some nearly
empty). The loss is XE so that the reference is plain cross-entropy: the reduction under
test does not depend on the objective.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from helm_scale.codon import Vocabulary
from helm_scale.models.config import pad_vocab
from tests.dist_utils import run_ranks

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")
VOCAB = Vocabulary.default()
CODON_IDS = (int(VOCAB.codon_lookup.min()), int(VOCAB.codon_lookup.max()) + 1)
SEQ, ROWS = 32, 8
KINDS = {  # name -> (data.objective, data.pack, model.attention)
    "clm padded": ("clm", False, "causal"),
    "mlm": ("mlm", False, "bidirectional"),
    "packed": ("clm", True, "causal"),
}
LAYOUTS = {  # world size -> [(label, TP, micro-batch rows, accumulation steps)]
    1: [("1 x 8", 1, 8, 1), ("1 x (4 x 2)", 1, 4, 2)],
    2: [("2 DP x 4", 1, 4, 1), ("2 DP x (2 x 2)", 1, 2, 2), ("TP 2 x DP 1", 2, 8, 1)],
}
BACKENDS = {"ddp": ["parallel.backend=ddp"],
            **{f"zero{stage}": ["parallel.backend=deepspeed", f"parallel.zero_stage={stage}"]
               for stage in (0, 1, 2, 3)}}
REL = 1e-6


def global_batch(kind: str) -> dict:
    """8 rows in the loader's format (helm_scale.data.batches)."""
    g = torch.Generator().manual_seed(17)
    packed = KINDS[kind][1]
    rows = ([[12, 9, 11], [5], [30], [3, 4], [16, 16], [2], [7, 20, 3], [1, 1, 25]] if packed
            else [[32], [2], [3], [31], [6], [29], [4], [32]])
    ids = torch.full((ROWS, SEQ), VOCAB.pad_id)
    labels = torch.full((ROWS, SEQ), -100)
    positions = torch.zeros(ROWS, SEQ, dtype=torch.long)
    segments = torch.zeros(ROWS, SEQ, dtype=torch.long)
    for r, lengths in enumerate(rows):
        start = 0
        for segment, n in enumerate(lengths, 1):
            tokens = torch.randint(*CODON_IDS, (n,), generator=g)
            ids[r, start:start + n], segments[r, start:start + n] = tokens, segment
            positions[r, start:start + n] = torch.arange(n)
            labels[r, start:start + n - 1] = tokens[1:]  # CLM: the next token of the same sequence
            start += n
    if KINDS[kind][0] == "mlm":
        chosen = (torch.rand(ROWS, SEQ, generator=g) < 0.15) & (segments > 0)
        chosen[3, :24] = True  # one row carries most of the targets
        labels = torch.where(chosen, ids, -100)
        ids = ids.masked_fill(chosen, VOCAB.mask_id)
    sample_ids = torch.where(segments > 0, torch.arange(ROWS)[:, None], -1)
    return dict(input_ids=ids, labels=labels, loss_mask=labels != -100, position_ids=positions,
                segment_ids=segments, sample_ids=sample_ids)


def _rows(dp_rank: int, dp: int, micro: int, m: int) -> slice:
    """The loader's order: micro-step m of the step holds global rows [m*micro*dp, ...),
    DP rank r the r-th micro-batch of them."""
    first = m * micro * dp + dp_rank * micro
    return slice(first, first + micro)


def _one_step_gradients(rank, world, dataset, run_root):
    import warnings
    warnings.filterwarnings("ignore")
    from helm_scale.parallel.weights import gather_tp_state
    from helm_scale.train_config import load_train_config
    from helm_scale.trainer import Trainer
    out = {}
    for kind, (objective, pack, attention) in KINDS.items():
        batch = global_batch(kind)
        for label, tp, micro, accum in LAYOUTS[world]:
            for backend, backend_settings in BACKENDS.items():
                cfg = load_train_config(TINY, [
                    f"data.dataset_dir={dataset}", f"run.run_dir={run_root}/{len(out)}", "run.tensorboard=false",
                    "data.num_workers=0", f"data.seq_len={SEQ}", f"data.objective={objective}", f"data.pack={pack}",
                    f"data.micro_batch_size={micro}", f"parallel.accumulation_steps={accum}",
                    f"parallel.tensor_parallel={tp}", "parallel.grad_clip=0", "loss.name=xe",
                    f"model.attention={attention}", "model.hidden_size=32", "model.ffn_hidden_size=64",
                    f"model.max_seq_len={SEQ}", f"model.padded_vocab_size={pad_vocab(len(VOCAB), tp=2)}",
                    "schedule.max_steps=2", "schedule.warmup_steps=1", *backend_settings])
                cfg.check(world)
                trainer = Trainer(cfg)
                state, engine = trainer.state, trainer.engine
                init = engine.full_state_dict()
                trainer._batches = iter([{k: v[_rows(state.dp_rank, state.dp_size, micro, m)]
                                          for k, v in batch.items()} for m in range(accum)])
                captured = {}
                step = engine.step

                def capture_then_step():
                    # After the window's last backward and before the optimizer consumes it:
                    # the gradient that step applies (DeepSpeed: reduced and ZeRO-gathered).
                    if engine.micro_steps % accum == 0:
                        full = lambda p: p.grad  # noqa: E731
                        if engine.backend == "deepspeed":
                            from deepspeed.utils import safe_get_full_grad as full
                        captured.update(gather_tp_state(engine.module, state.tp_group, tensor_of=full))
                    return step()
                engine.step = capture_then_step
                sums, grad_norm = trainer.train_step()
                trainer._window, trainer._window_steps = sums, 1  # as fit() hands them to the log
                logged = trainer._log_train(grad_norm)["loss"]
                out[(kind, label, backend)] = dict(init=init, grad=captured, model=cfg.model, logged=logged)
    return out


def _reference_gradient(kind: str, run: dict) -> dict:
    """d/dw of sum(CE over the 8 rows' target tokens) / (their count), plain PyTorch."""
    from helm_scale.models.registry import build_model
    from helm_scale.data import model_inputs
    objective, pack, _ = KINDS[kind]
    model = build_model(run["model"])
    model.load_state_dict(run["init"])
    batch = global_batch(kind)
    logits = model(**model_inputs(batch, pack, mask_padding=objective == "mlm"))
    mask = batch["loss_mask"].reshape(-1).float()
    per_token = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1).clamp_min(0),
                                reduction="none")
    loss = (per_token * mask).sum() / mask.sum()
    loss.backward()
    return float(loss), {name: p.grad for name, p in model.named_parameters()}


def _relative_error(grad: dict, ref: dict) -> float:
    assert grad.keys() == ref.keys()
    diff = torch.cat([(grad[k] - ref[k]).reshape(-1) for k in ref]).norm()
    return float(diff / torch.cat([ref[k].reshape(-1) for k in ref]).norm())


@pytest.mark.slow
def test_one_step_gradient_is_the_global_token_mean_at_every_layout(synthetic_dataset, tmp_path):
    runs = {}
    for world in LAYOUTS:  # one process group per world size; every rank returns the same gathered grads
        runs.update(run_ranks(_one_step_gradients, world, synthetic_dataset, str(tmp_path / f"w{world}"))[0])
    failures = []
    for kind in KINDS:
        first = runs[(kind, LAYOUTS[1][0][0], "ddp")]
        ref_loss, ref = _reference_gradient(kind, first)
        assert min(float(g.norm()) for g in ref.values() if g.dim() == 2) > 0
        for (k, label, backend), run in runs.items():
            if k != kind:
                continue
            assert all(torch.equal(run["init"][n], first["init"][n]) for n in first["init"]), (kind, label, backend)
            rel = _relative_error(run["grad"], ref)
            loss_rel = abs(run["logged"] - ref_loss) / ref_loss
            print(f"{kind:>10} | {label:>14} | {backend:>5} | gradient rel. error {rel:.1e} | "
                  f"logged loss rel. error {loss_rel:.1e}")
            if not (rel < REL and loss_rel < REL):
                failures.append(f"{kind}, {label}, {backend}: gradient {rel:.2e}, logged loss {loss_rel:.2e}")
    assert not failures, f"differs from the global token mean by more than {REL} (relative): {failures}"


# ---------------------------------------------------------------- no device reads per micro-batch
def _reads_per_micro_batch(rank, world):
    """Host reads of tensor values (item, bool, int, float, tolist, numpy) during a step of 4
    micro-batches, after a first step has built the loss's cached tables: those inside
    the optimizer update at the boundary, and all the others."""
    import warnings
    warnings.filterwarnings("ignore")
    from torch.overrides import TorchFunctionMode

    from helm_scale.losses import LossConfig, build_loss
    from helm_scale.models.config import ModelConfig
    from helm_scale.models.tp_transformer import TensorParallelTransformer
    from helm_scale.parallel import OptimizerConfig, ParallelConfig, build_engine, init_parallel
    from helm_scale.trainer import optimizer_step
    reads = {torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__,
             torch.Tensor.tolist, torch.Tensor.numpy}

    class CountReads(TorchFunctionMode):
        count = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.count += func in reads
            return func(*args, **(kwargs or {}))

    batches = [{k: v[2 * m:2 * m + 2] for k, v in global_batch("packed").items()} for m in range(4)]
    out = {}
    for backend, settings in {"ddp": {}, "zero1": dict(backend="deepspeed", zero_stage=1),
                              "zero3": dict(backend="deepspeed", zero_stage=3)}.items():
        pcfg = ParallelConfig(accumulation_steps=4, **settings)
        state = init_parallel(pcfg)
        model_cfg = ModelConfig(num_layers=2, hidden_size=32, ffn_hidden_size=64, num_heads=4, max_seq_len=SEQ)
        engine = build_engine(TensorParallelTransformer(model_cfg), OptimizerConfig(), pcfg, state)
        loss_fn = build_loss(LossConfig(), VOCAB, model_cfg.padded_vocab_size)
        optimizer_step(engine, loss_fn, batches, state, True, "clm", VOCAB.pad_id)
        step, in_update = engine.step, []

        def counted_step():
            before, result = mode.count, step()
            if result.stepped:
                in_update.append(mode.count - before)
            return result
        engine.step = counted_step
        with CountReads() as mode:
            optimizer_step(engine, loss_fn, batches, state, True, "clm", VOCAB.pad_id)
        out[backend] = (mode.count - sum(in_update), sum(in_update))
    return out


@pytest.mark.slow
def test_micro_batches_never_read_a_tensor_value():
    """On a GPU every such read would stall the host until the device caught up. On this
    CPU-only check any read counts, so it is stricter than needed there."""
    for backend, (elsewhere, in_update) in run_ranks(_reads_per_micro_batch, 1)[0].items():
        print(f"{backend}: tensor reads per step of 4 micro-batches: {elsewhere} outside the optimizer "
              f"update, {in_update} in it (the optimizers' own, e.g. AdamW's host step counters)")
        assert elsewhere == 0, backend
