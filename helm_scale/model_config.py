"""The model's settings: one typed dataclass shared by the tensor-parallel model
(helm_scale.model), the single-device model (helm_scale.plain_model), the trainer's
configuration and exported checkpoints. No torch import here, so configs load without it."""
from __future__ import annotations

from dataclasses import dataclass

PARAMS_DTYPES = ("fp32", "bf16")
ARCHS = ("transformer", "lstm", "mamba", "hyena")  # lstm: the recurrent baseline (helm_scale.lstm);
# mamba, hyena: HELM's attention-free backbones (helm_scale.mamba, helm_scale.hyena). TP 1 only.
PLAIN_ONLY = ("lstm", "mamba", "hyena")  # no tensor-parallel form and no packed rows


def pad_vocab(vocab_size: int, tp: int = 1, multiple: int = 8) -> int:
    """Smallest size >= vocab_size divisible by multiple * tp (megatron's padding rule)."""
    step = multiple * tp
    return -(-vocab_size // step) * step


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 69
    padded_vocab_size: int | None = None  # None: pad_vocab(vocab_size); fix it to move checkpoints across TP
    num_layers: int = 10
    hidden_size: int = 640
    ffn_hidden_size: int = 2560
    num_heads: int = 10
    max_seq_len: int = 444
    position: str = "learned"  # "learned" | "rotary" | "none" (no position signal but the model's own)
    attention: str = "causal"  # "causal" | "bidirectional"
    dropout: float = 0.0
    init_std: float = 0.02
    tie_embeddings: bool = True
    params_dtype: str = "fp32"  # "fp32" | "bf16"
    layernorm_eps: float = 1e-5
    rotary_base: float = 10000.0
    arch: str = "transformer"  # "transformer" | "lstm" (heads, ffn unused) | "mamba" | "hyena" (heads unused)

    def __post_init__(self):
        if self.padded_vocab_size is None:
            object.__setattr__(self, "padded_vocab_size", pad_vocab(self.vocab_size))
        for key in ("vocab_size", "num_layers", "hidden_size", "ffn_hidden_size", "num_heads",
                    "max_seq_len", "padded_vocab_size"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ValueError(f"ModelConfig.{key} must be a positive int, got {getattr(self, key)!r}")
        if self.padded_vocab_size < self.vocab_size:
            raise ValueError(f"padded_vocab_size {self.padded_vocab_size} < vocab_size {self.vocab_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"num_heads {self.num_heads} does not divide hidden_size {self.hidden_size}")
        if self.position not in ("learned", "rotary", "none"):
            raise ValueError(f"position must be 'learned' or 'rotary' (or 'none': no position signal "
                             f"but the model's own), got {self.position!r}")
        if self.position == "rotary" and self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head dim, got {self.head_dim}")
        if self.attention not in ("causal", "bidirectional"):
            raise ValueError(f"attention must be 'causal' or 'bidirectional', got {self.attention!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.params_dtype not in PARAMS_DTYPES:
            raise ValueError(f"params_dtype must be one of {sorted(PARAMS_DTYPES)}, got {self.params_dtype!r}")
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.arch == "lstm" and self.attention != "causal":
            raise ValueError("arch 'lstm' is a left-to-right model: it needs attention = 'causal'")
        if self.arch in ("mamba", "hyena") and self.position == "rotary":
            raise ValueError(f"arch {self.arch!r} has no attention to rotate: use position 'learned' or 'none'")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def validate_for_tp(self, tp: int) -> None:
        """Raise if this model cannot be split over ``tp`` tensor-parallel ranks."""
        if self.arch in PLAIN_ONLY and tp != 1:
            raise ValueError(f"arch {self.arch!r} has no tensor-parallel form: it needs tensor_parallel = 1, "
                             f"got {tp} (scale it with data parallelism or DeepSpeed ZeRO)")
        for key in ("num_heads", "ffn_hidden_size", "padded_vocab_size"):
            if getattr(self, key) % tp:
                hint = f"; use pad_vocab({self.vocab_size}, tp={tp})" if key == "padded_vocab_size" else ""
                raise ValueError(f"{key} = {getattr(self, key)} is not divisible by tensor_parallel = {tp}{hint}")

    def num_parameters(self, include_embeddings: bool = True) -> int:
        """Exact parameter count of HelmTransformer (all TP ranks together), or of LstmLM,
        MambaLM, HyenaLM (these two counted on a model built on the meta device)."""
        if self.arch in ("mamba", "hyena"):
            return self._meta_model().parameter_count(include_embeddings)
        h, f = self.hidden_size, self.ffn_hidden_size
        if self.arch == "lstm":  # per layer: W_ih, W_hh (4h x h each) and two 4h biases
            n = self.num_layers * (8 * h * h + 8 * h) + (0 if self.tie_embeddings else self.padded_vocab_size * h)
            return n + (self.padded_vocab_size * h if include_embeddings else 0)
        per_layer = 2 * h + (3 * h * h + 3 * h) + (h * h + h) + 2 * h + (h * f + f) + (f * h + h)
        n = self.num_layers * per_layer + 2 * h
        if not self.tie_embeddings:
            n += self.padded_vocab_size * h  # the head is counted as a matmul, not an embedding
        if include_embeddings:
            n += self.padded_vocab_size * h + (self.max_seq_len * h if self.position == "learned" else 0)
        return n

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward) for MFU.

        6 * N_matmul + 12 * L * h * S, where N_matmul = L * (4h^2 + 2hf) + V_padded * h counts
        every weight used in a matmul (the head included, embedding lookups and norms not), and
        12 * L * h * S is QK^T and attention x V (2 * 2 * S * h per token and layer forward,
        times 3 with the backward). Causal masking is not discounted (PaLM convention).
        """
        if self.arch in ("mamba", "hyena"):
            return self._meta_model().flops_per_token(seq_len)
        h, f, L = self.hidden_size, self.ffn_hidden_size, self.num_layers
        if self.arch == "lstm":  # 8h^2 matmul weights per layer and the head; no attention
            return 6.0 * (L * 8 * h * h + self.padded_vocab_size * h)
        matmul_params = L * (4 * h * h + 2 * h * f) + self.padded_vocab_size * h
        return 6.0 * matmul_params + 12.0 * L * h * seq_len

    def _meta_model(self):
        """The model without memory (meta tensors): its shapes only, for counting."""
        import torch

        from helm_scale.plain_model import build_plain_model
        with torch.device("meta"):
            return build_plain_model(self)


def __getattr__(name: str):
    # DTYPES (params_dtype -> torch dtype) is built on first use, so that importing the
    # config needs no torch; the models that need it import it from here as before.
    # (Issue 19 item 1 moves ModelConfig to helm_scale/models/config.py; this mapping
    # belongs with the models then.)
    if name == "DTYPES":
        import torch
        return {"fp32": torch.float32, "bf16": torch.bfloat16}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
