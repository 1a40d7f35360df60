"""HELM's attention-free backbones (helm_scale.models.mamba, .hyena): the parallel scan
and the FFT convolution against direct float64 references, causality and bidirectionality,
right padding, the recurrent decoder, configuration checks, and export / evaluation."""
import math

import pytest
import torch

from helm_scale.cli import main
from helm_scale.evaluate import generate, sequence_nll
from helm_scale.evaluate.generation.decoding import decoder_for
from helm_scale.evaluate.lm.scoring import embed
from helm_scale.export import load_exported
from helm_scale.models import mamba
from helm_scale.models.config import ModelConfig
from helm_scale.models.hyena import HyenaLM, long_conv
from helm_scale.models.mamba import MambaLM, selective_scan
from helm_scale.models.registry import build_model, num_parameters
from tests.eval_utils import tiny_export

SMALL = {"num_layers": 2, "hidden_size": 32, "num_heads": 2, "ffn_hidden_size": 48, "max_seq_len": 64}


def small(arch: str, attention: str = "causal", **extra) -> ModelConfig:
    position = "learned" if arch == "mamba" else "none"
    return ModelConfig(**{**SMALL, "arch": arch, "attention": attention, "position": position, **extra})


def _model(cfg: ModelConfig, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(cfg).double().eval()


# ------------------------------------------------------------------- the two primitives
@pytest.mark.parametrize("length", [1, 2, 7, 64, 333, 444])
def test_parallel_scan_equals_the_sequential_recurrence_in_float64(length):
    """chunk_starts (a sweep inside every chunk, then a scan over chunks) gives the states
    entering each chunk, in both directions, and selective_scan every output and the last
    state, as the recurrence run one position at a time: lengths within one chunk, on
    chunk boundaries and with a padded last chunk."""
    x, dt, A, B, C = _ssm_inputs(length, length)
    chunk = mamba.chunk_length(length)
    delta, u, Bs = (mamba._by_step(t, chunk) for t in (dt, dt * x, B))
    for reverse in (False, True):
        h, entering = torch.zeros(2, *A.shape, dtype=torch.float64), {}
        for t in reversed(range(length)) if reverse else range(length):
            if t % chunk == (chunk - 1 if reverse else 0):
                entering[t // chunk] = h
            h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * x[:, t])[..., None] * B[:, t, None, :]
        if reverse and length % chunk:  # the padded last chunk: its real positions are entered at 0 too
            entering[length // chunk] = torch.zeros_like(h)
        starts = mamba.chunk_starts(delta, u, Bs, A, reverse)
        assert torch.allclose(starts, torch.stack([entering[c] for c in range(starts.shape[1])], 1),
                              rtol=0, atol=1e-10)
    y, last = selective_scan(x, dt, A, B, C)
    want_y, want_last = _naive_selective_scan(x, dt, A, B, C)
    assert torch.allclose(y, want_y, rtol=0, atol=1e-10) and torch.allclose(last, want_last, rtol=0, atol=1e-10)


def _naive_selective_scan(x, dt, A, B, C):
    h, ys = torch.zeros(x.shape[0], *A.shape, dtype=x.dtype), []
    for t in range(x.shape[1]):
        h = torch.exp(dt[:, t, :, None] * A) * h + (dt[:, t] * x[:, t])[..., None] * B[:, t, None, :]
        ys.append((h * C[:, t, None, :]).sum(-1))
    return torch.stack(ys, 1), h


def _ssm_inputs(length, seed, d=5, n=3):
    gen = torch.Generator().manual_seed(seed)
    x, B, C = (torch.randn(2, length, k, generator=gen, dtype=torch.float64) for k in (d, n, n))
    dt = torch.rand(2, length, d, generator=gen, dtype=torch.float64) * 0.5
    A = -torch.rand(d, n, generator=gen, dtype=torch.float64) * 2
    return x, dt, A, B, C


@pytest.mark.parametrize("length", [1, 3, 50])
def test_selective_scan_equals_the_sequential_recurrence_and_its_gradient_is_exact(length):
    inputs = _ssm_inputs(length, length)
    y, last = selective_scan(*inputs)
    want_y, want_last = _naive_selective_scan(*inputs)
    assert torch.allclose(y, want_y, rtol=0, atol=1e-10) and torch.allclose(last, want_last, rtol=0, atol=1e-10)
    # The hand-written backward against finite differences (float64) ...
    leaves = [t.clone().requires_grad_() for t in _ssm_inputs(min(length, 9), 7)]
    assert torch.autograd.gradcheck(lambda *t: selective_scan(*t)[0], leaves)
    # ... and against autograd through the naive loop.
    leaves = [t.clone().requires_grad_() for t in inputs]
    weight = torch.randn(y.shape, dtype=torch.float64)
    mine = torch.autograd.grad((selective_scan(*leaves)[0] * weight).sum(), leaves)
    naive = torch.autograd.grad((_naive_selective_scan(*leaves)[0] * weight).sum(), leaves)
    for m, n in zip(mine, naive):
        assert torch.allclose(m, n, rtol=0, atol=1e-10)


def _direct_conv(v, k, causal):
    """y_t = sum_s k[lag t - s] v_s by the definition (float64 loops over t and s)."""
    s = v.shape[-1]
    offset = 0 if causal else s - 1  # index of lag 0 in k
    y = torch.zeros_like(v)
    for t in range(s):
        for j in range(s):
            if causal and j > t:
                continue
            y[..., t] += k[:, t - j + offset] * v[..., j]
    return y


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("length", [1, 5, 40])
def test_fft_long_convolution_equals_the_direct_convolution(causal, length):
    gen = torch.Generator().manual_seed(length)
    v = torch.randn(2, 3, length, generator=gen, dtype=torch.float64)
    k = torch.randn(3, length if causal else 2 * length - 1, generator=gen, dtype=torch.float64)
    assert torch.allclose(long_conv(v, k, causal), _direct_conv(v, k, causal), rtol=0, atol=1e-10)
    fp32 = long_conv(v.float(), k.float(), causal)  # the precision the model runs in
    assert fp32.dtype == torch.float32 and torch.allclose(fp32.double(), _direct_conv(v, k, causal), atol=1e-4)


# ---------------------------------------------------------------- what each output sees
@pytest.mark.parametrize("arch", ["mamba", "hyena"])
def test_causal_variants_never_see_the_future(arch):
    model = _model(small(arch))
    ids = torch.randint(5, 69, (3, 30))
    changed = ids.clone()
    changed[:, 17] = (ids[:, 17] - 5 + 1) % 64 + 5
    before, after = model(ids), model(changed)
    assert (before[:, :17] - after[:, :17]).abs().max() < 1e-12
    assert (before[:, 17:] - after[:, 17:]).abs().amax(dim=(0, 2)).min() > 1e-6  # it does see the past


@pytest.mark.parametrize("arch", ["mamba", "hyena"])
def test_bidirectional_variants_see_both_sides(arch):
    model = _model(small(arch, "bidirectional"))
    ids = torch.randint(5, 69, (3, 30))
    changed = ids.clone()
    changed[:, 17] = (ids[:, 17] - 5 + 1) % 64 + 5
    moved = (model(ids) - model(changed)).abs().amax(dim=(0, 2))
    assert moved[:17].min() > 1e-6 and moved[18:].min() > 1e-6


@pytest.mark.parametrize("arch", ["mamba", "hyena"])
def test_bidirectional_rows_ignore_their_right_padding(arch):
    model = _model(small(arch, "bidirectional"))
    ids = torch.randint(5, 69, (2, 25))
    lengths = [25, 11]
    padding = torch.arange(25)[None] >= torch.tensor(lengths)[:, None]
    padded = ids.masked_fill(padding, 0)
    batch = model.hidden_states(padded, padding_mask=padding)
    for row, n in enumerate(lengths):
        alone = model.hidden_states(ids[row:row + 1, :n])[0]
        assert torch.allclose(batch[row, :n], alone, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="right-padded"):
        model.hidden_states(padded, padding_mask=padding.flip(1))


@pytest.mark.parametrize("arch", ["mamba", "hyena"])
def test_packed_rows_are_refused(arch):
    model = _model(small(arch))
    with pytest.raises(ValueError, match="packed rows"):
        model(torch.randint(5, 69, (2, 10)), segment_ids=torch.tensor([[1] * 5 + [2] * 5] * 2))


def test_selective_scan_in_row_groups_is_the_same(monkeypatch):
    inputs = [t.requires_grad_() for t in _ssm_inputs(50, 3)]  # 2 chunks of 32
    whole = selective_scan(*inputs)
    whole_grads = torch.autograd.grad(whole[0].square().sum(), inputs)
    monkeypatch.setattr(mamba, "STEP_BUDGET", 2 * 5 * 3)  # one row per group
    assert len(mamba._row_groups(inputs[0], 3)) == 2
    grouped = selective_scan(*inputs)
    grouped_grads = torch.autograd.grad(grouped[0].square().sum(), inputs)
    for got, want in zip((*grouped, *grouped_grads), (*whole, *whole_grads)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_row_groups_fit_the_cache_on_a_cpu_and_the_memory_budget_elsewhere():
    b, s, d, n = 64, 256, 256, 16  # the compare config's inner width, 64 rows of 256
    cpu = mamba._row_groups(torch.empty(b, s, d), n)
    chunks = s // mamba.chunk_length(s)
    assert all((r.stop - r.start) * chunks * d * n <= mamba.STEP_BUDGET for r in cpu)
    other = mamba._row_groups(torch.empty(b, s, d, device="meta"), n)
    assert all((r.stop - r.start) * s * d * n <= mamba.STATE_BUDGET for r in other)
    assert len(other) < len(cpu)
    for groups in (cpu, other):  # every row once, in order
        assert [i for r in groups for i in range(r.start, r.stop)] == list(range(b))


def test_mamba_recurrent_decoder_matches_the_full_forward():
    model = _model(small("mamba"))
    ids = torch.randint(5, 69, (4, 21))
    full = model(ids)
    logits, state = model.decode(ids[:, :2])  # a prompt shorter than the conv window
    assert torch.allclose(logits, full[:, 1], rtol=0, atol=1e-10)
    keep = torch.tensor([0, 2, 3])
    state = state.rows(keep)
    for t in range(2, 21):
        logits, state = model.decode(ids[keep, t:t + 1], state)
        assert torch.allclose(logits, full[keep, t], rtol=0, atol=1e-10), t
    decoder = decoder_for(model)
    assert type(decoder).__name__ == "IncrementalDecoder"
    assert torch.allclose(decoder.start(ids[:, :5]), full[:, 4], rtol=0, atol=1e-10)
    assert torch.allclose(decoder.step(ids[keep, 5], keep), full[keep, 5], rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="causal"):
        _model(small("mamba", "bidirectional")).decode(ids)


def test_mamba_decays_neither_a_nor_d():
    from helm_scale.parallel import OptimizerConfig
    from helm_scale.parallel.optim import build_param_groups
    model = build_model(small("mamba"))
    decay, no_decay = (set(map(id, g["params"])) for g in build_param_groups(model, OptimizerConfig()))
    for name, p in model.named_parameters():
        assert (id(p) in no_decay) == (name.endswith(("A_log", ".D")) or p.ndim == 1 or "embeddings" in name), name


# ---------------------------------------------------------------- configuration and sizes
def test_parameter_counts_are_the_models():
    for arch, attention in [("mamba", "causal"), ("mamba", "bidirectional"), ("hyena", "causal")]:
        cfg = small(arch, attention, tie_embeddings=False)
        model = build_model(cfg)
        assert sum(p.numel() for p in model.parameters()) == num_parameters(cfg)
        assert num_parameters(cfg, include_embeddings=False) == num_parameters(cfg) - cfg.padded_vocab_size * 32 \
            - (64 * 32 if arch == "mamba" else 0)
    # One block counted by hand: h 32, inner 64, dt rank 2, state 16, 4 taps, MLP 48.
    h, d, r, n, f = 32, 64, 2, 16, 48
    mamba_block = 4 * h + h * 2 * d + d * 4 + d + d * (r + 2 * n) + r * d + d + d * n + d + d * h + h * 2 * f + f * h
    cfg = small("mamba", num_layers=1)
    assert num_parameters(cfg) == mamba_block + 2 * h + cfg.padded_vocab_size * h + 64 * h


@pytest.mark.parametrize("overrides", [{"position": "rotary"}])
@pytest.mark.parametrize("arch", ["mamba", "hyena"])
def test_config_errors(arch, overrides):
    with pytest.raises(ValueError, match="no attention to rotate"):
        small(arch, **overrides)
    with pytest.raises(ValueError, match=f"arch '{arch}' has no tensor-parallel form"):
        small(arch).validate_for_tp(2)


@pytest.mark.parametrize("arch", ["mamba", "hyena"])
@pytest.mark.parametrize("overrides, message", [
    (["parallel.tensor_parallel=2"], "has no tensor-parallel form: it needs tensor_parallel = 1"),
    (["data.pack=true"], "cannot take packed rows"),
])
def test_train_refuses_tp_and_packing(arch, overrides, message, tmp_path, capsys):
    config = f"configs/compare/{arch}.yaml"
    assert main(["train", config, f"data.dataset_dir={tmp_path}", *overrides]) == 2
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------- exports and evaluation
@pytest.mark.parametrize("arch", ["mamba", "hyena"])
def test_exports_load_score_and_generate(arch, tmp_path):
    position = "learned" if arch == "mamba" else "none"
    exported = load_exported(tiny_export(tmp_path / arch, arch=arch, position=position, **SMALL))
    assert isinstance(exported.model, MambaLM if arch == "mamba" else HyenaLM)
    nll, nt = sequence_nll(exported, ["ATGAAATAA", "ATGCCCGGGTAG"])
    assert nt.tolist() == [9, 12] and all(math.isfinite(x) for x in nll)
    seqs = generate(exported, 3, max_codons=10, progress=False)
    assert len(seqs) == 3 and all(s.startswith("ATG") for s in seqs)
    mlm = load_exported(tiny_export(tmp_path / f"{arch}-mlm", "mlm", arch=arch, position=position, **SMALL))
    pooled = embed(mlm, ["ATGAAATAA", "ATGCCCGGGTAGCCC"])  # rows of two lengths: padding hidden
    alone = embed(mlm, ["ATGAAATAA"])
    assert pooled.shape == (2, 32) and abs(pooled[0] - alone[0]).max() < 1e-5
