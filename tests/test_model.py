"""Single-process checks of the model, its masks and configuration, and optimizer groups.

A one-rank gloo group (TP = 1) hosts megatron's parallel state, as init_parallel sets it up
for real runs. Every masking test checks both that what must not change does not, and
that what must change does, so a mask that blocks everything fails too.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest
import torch
import torch.distributed as dist

from helm_scale.codon import Vocabulary
from helm_scale.models.config import ModelConfig, pad_vocab
from helm_scale.models.layers import build_attention_mask
from helm_scale.models.registry import flops_per_token, num_parameters
from helm_scale.models.tp_transformer import TensorParallelTransformer
from helm_scale.parallel import OptimizerConfig, ParallelConfig, build_param_groups, init_parallel

VOCAB = Vocabulary.default()
CODON_IDS = (min(VOCAB.codon_lookup.tolist()), max(VOCAB.codon_lookup.tolist()) + 1)
EXACT = dict(rtol=0, atol=1e-6)  # fp32: a masked-out token changes nothing but rounding


@pytest.fixture(scope="module", autouse=True)
def one_rank_group():
    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"file://{tempfile.mktemp()}", rank=0, world_size=1)
    return init_parallel(ParallelConfig(seed=7))


def small(**overrides) -> ModelConfig:
    base = dict(vocab_size=len(VOCAB), num_layers=2, hidden_size=32, ffn_hidden_size=64,
                num_heads=4, max_seq_len=32)
    return ModelConfig(**{**base, **overrides})


def codons(*shape, seed=0) -> torch.Tensor:
    return torch.randint(*CODON_IDS, shape, generator=torch.Generator().manual_seed(seed))


VARIANTS = [(a, p) for a in ("causal", "bidirectional") for p in ("learned", "rotary")]


@pytest.mark.parametrize("attention,position", VARIANTS)
@torch.no_grad()
def test_segments_never_see_each_other(attention, position):
    model = TensorParallelTransformer(small(attention=attention, position=position)).eval()
    ids = codons(2, 20)
    segments = torch.tensor([[1] * 8 + [2] * 9 + [0] * 3, [5] * 20])
    positions = torch.cat([torch.arange(8), torch.arange(9), torch.arange(3)]).expand(2, 20)
    base = model(ids, positions, segments)
    perturbed = ids.clone()
    perturbed[0, 8:17] = codons(9, seed=1)  # rewrite segment 2 of row 0
    out = model(perturbed, positions, segments)
    torch.testing.assert_close(out[0, :8], base[0, :8], **EXACT)  # segment 1 unaffected
    torch.testing.assert_close(out[0, 17:], base[0, 17:], **EXACT)  # padding segment too
    torch.testing.assert_close(out[1], base[1], **EXACT)  # other rows untouched
    assert (out[0, 8:17] - base[0, 8:17]).abs().max() > 1e-3


@pytest.mark.parametrize("position", ["learned", "rotary"])
@torch.no_grad()
def test_packed_segment_equals_the_sequence_alone(position):
    """Reset positions and the segment mask make a packed sequence a sequence of its own."""
    model = TensorParallelTransformer(small(position=position)).eval()
    first, second = codons(1, 7, seed=2), codons(1, 11, seed=3)
    packed = torch.cat([first, second], dim=1)
    positions = torch.cat([torch.arange(7), torch.arange(11)])[None]
    segments = torch.tensor([[1] * 7 + [2] * 11])
    out = model(packed, positions, segments)
    torch.testing.assert_close(out[:, 7:], model(second), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, :7], model(first), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("position", ["learned", "rotary"])
@torch.no_grad()
def test_causal_masking_hides_the_future_and_bidirectional_does_not(position):
    ids = codons(2, 16)
    perturbed = ids.clone()
    perturbed[:, 10] = (ids[:, 10] - CODON_IDS[0] + 1) % 64 + CODON_IDS[0]
    causal = TensorParallelTransformer(small(position=position)).eval()
    base, out = causal(ids), causal(perturbed)
    torch.testing.assert_close(out[:, :10], base[:, :10], **EXACT)
    assert (out[:, 10:] - base[:, 10:]).abs().amax(dim=-1).min() > 1e-4  # every later position moves
    bidirectional = TensorParallelTransformer(small(position=position, attention="bidirectional")).eval()
    assert (bidirectional(perturbed)[:, :10] - bidirectional(ids)[:, :10]).abs().max() > 1e-3


@torch.no_grad()
def test_padding_mask_hides_padded_keys():
    model = TensorParallelTransformer(small(attention="bidirectional")).eval()
    ids = codons(2, 12)
    padding = torch.zeros(2, 12, dtype=torch.bool)
    padding[0, 9:] = True
    perturbed = ids.clone()
    perturbed[0, 9:] = VOCAB.pad_id + (ids[0, 9:] % 2)  # different padding content
    base, out = model(ids, padding_mask=padding), model(perturbed, padding_mask=padding)
    torch.testing.assert_close(out[0, :9], base[0, :9], **EXACT)
    assert torch.isfinite(out).all()
    assert (model(perturbed)[0, :9] - model(ids)[0, :9]).abs().max() > 1e-3  # unmasked, it would leak


def test_mask_builder_shapes_and_flash_path():
    assert build_attention_mask(None, None, causal=True) == (None, True)
    assert build_attention_mask(None, None, causal=False) == (None, False)
    mask, is_causal = build_attention_mask(torch.tensor([[1, 1, 2]]), None, causal=True)
    assert not is_causal
    assert mask.tolist() == [[[[True, False, False], [True, True, False], [False, False, True]]]]


def test_output_is_this_ranks_vocab_slice_and_backward_reaches_every_parameter():
    model = TensorParallelTransformer(small(position="rotary", tie_embeddings=False))
    logits = model(codons(3, 10))
    assert logits.shape == (3, 10, pad_vocab(len(VOCAB)))
    logits.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_bf16_parameters_give_bf16_logits():
    model = TensorParallelTransformer(small(params_dtype="bf16"))
    logits = model(codons(2, 8))
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


def test_same_seed_same_weights():
    from helm_scale.parallel import set_seed
    set_seed(3)
    a = TensorParallelTransformer(small()).state_dict()
    set_seed(3)
    b = TensorParallelTransformer(small()).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if "extra_state" not in k)


@pytest.mark.parametrize("overrides", [dict(), dict(tie_embeddings=False), dict(position="rotary")])
def test_parameter_count_is_exact(overrides):
    cfg = small(**overrides)
    assert num_parameters(cfg) == sum(p.numel() for p in TensorParallelTransformer(cfg).parameters())


def test_helm_50m_size_and_flops_formula():
    cfg = ModelConfig(vocab_size=70)  # the paper's 10 x 640 x 2560, 444 tokens
    assert 49e6 < num_parameters(cfg) < 51e6
    h, f, L, V = 640, 2560, 10, cfg.padded_vocab_size
    assert flops_per_token(cfg, 444) == 6 * (L * (4 * h * h + 2 * h * f) + V * h) + 12 * L * h * 444


@pytest.mark.parametrize("overrides,message", [
    (dict(num_heads=5), "num_heads 5 does not divide hidden_size 32"),
    (dict(position="alibi"), "position must be 'learned' or 'rotary'"),
    (dict(attention="prefix"), "attention must be 'causal' or 'bidirectional'"),
    (dict(padded_vocab_size=60), "padded_vocab_size 60 < vocab_size 69"),
    (dict(hidden_size=36, num_heads=12), "rotary positions need an even head dim"),
    (dict(dropout=1.0), r"dropout must be in \[0, 1\)"),
    (dict(num_layers=0), "num_layers must be a positive int"),
    (dict(params_dtype="fp16"), "params_dtype must be one of"),
])
def test_model_config_errors_are_clear(overrides, message):
    if "hidden_size" in overrides:
        overrides["position"] = "rotary"
    with pytest.raises(ValueError, match=message):
        small(**overrides)


def test_tp_validation_names_the_fix():
    with pytest.raises(ValueError, match="num_heads = 4 is not divisible by tensor_parallel = 3"):
        small().validate_for_tp(3)
    with pytest.raises(ValueError, match=r"padded_vocab_size = 72 .* use pad_vocab\(69, tp=16\)"):
        small(num_heads=16, hidden_size=64, ffn_hidden_size=128).validate_for_tp(16)
    assert pad_vocab(69, tp=16) % 16 == 0 and pad_vocab(69) == 72


@pytest.mark.parametrize("kwargs,message", [
    (dict(backend="fsdp"), "backend must be one of"),
    (dict(zero_stage=2), "zero_stage 2 needs backend='deepspeed'"),
    (dict(backend="deepspeed", offload_optimizer=True), "offload_optimizer needs"),
    (dict(sequence_parallel=True), "needs tensor_parallel > 1"),
    (dict(accumulation_steps=0), "accumulation_steps must be an int >= 1"),
    (dict(precision="fp16"), "precision must be one of"),
    (dict(backend="deepspeed", zero_stage=4), "zero_stage must be 0, 1, 2 or 3"),
])
def test_parallel_config_errors_are_clear(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ParallelConfig(**kwargs)


@pytest.mark.parametrize("decay_embeddings", [False, True])
def test_param_groups_exempt_norms_biases_and_embeddings(decay_embeddings):
    model = TensorParallelTransformer(small(tie_embeddings=False))
    decay, no_decay = build_param_groups(model, OptimizerConfig(weight_decay=0.1,
                                                                decay_embeddings=decay_embeddings))
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert decayed.isdisjoint(exempt) and decayed | exempt == set(names.values())
    assert all(n.endswith("bias") or "norm" in n or n in ("position_embeddings", "word_embeddings.weight")
               for n in exempt)
    assert {"layers.0.norm1.weight", "layers.0.qkv.bias", "final_norm.bias"} <= exempt
    assert {"layers.1.fc2.weight", "head.weight"} <= decayed
    embeddings = {"word_embeddings.weight", "position_embeddings"}
    assert embeddings <= (decayed if decay_embeddings else exempt)


def test_model_needs_parallel_state_and_imports_patch_nothing():
    """Importing the model and parallel packages must leave torch.cuda alone (GPU safety),
    and the model refuses to build before megatron's state exists."""
    code = ("import torch; orig = torch.cuda.current_device\n"
            "import helm_scale.models.tp_transformer as tp, helm_scale.parallel, helm_scale.parallel.deepspeed_engine\n"
            "from megatron.core.tensor_parallel import random as r\n"
            "assert torch.cuda.current_device is orig and r._CUDA_RNG_STATE_TRACKER is None\n"
            "from helm_scale.models.config import ModelConfig\n"
            "try:\n    tp.TensorParallelTransformer(ModelConfig())\n"
            "except RuntimeError as e:\n    assert 'init_parallel' in str(e); print('ok')\n")
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_dropout_is_seeded_through_megatrons_rng_streams():
    """Attention dropout draws from megatron's model-parallel stream (the CPU tracker here),
    the rest from the default generator: reseeding replays both, another seed does not."""
    from helm_scale.parallel import set_seed
    ids = codons(2, 12)

    def run(seed):
        set_seed(seed)
        model = TensorParallelTransformer(small(dropout=0.3)).train()
        return model(ids), model.eval()(ids)

    (train_a, eval_a), (train_b, _), (train_c, eval_c) = run(11), run(11), run(12)
    assert torch.equal(train_a, train_b)
    assert not torch.allclose(train_a, eval_a)  # dropout is active in training
    assert not torch.allclose(train_a, train_c) and not torch.equal(eval_a, eval_c)
