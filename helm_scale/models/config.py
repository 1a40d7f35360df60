"""The model's settings: one typed dataclass shared by every network of
helm_scale.models, the trainer's configuration and exported checkpoints.

Plain data and its checks: no torch import here (dtypes are named, helm_scale.models.layers
maps the names to torch dtypes), so a configuration loads where torch is absent. What a
configuration costs (parameters, FLOPs) is the network's business:
helm_scale.models.registry.num_parameters / flops_per_token.
"""
from __future__ import annotations

from dataclasses import dataclass

DTYPE_NAMES = ("fp32", "bf16")
ARCHS = ("transformer", "lstm", "mamba", "hyena")  # lstm: the recurrent baseline (models.lstm);
# mamba, hyena: HELM's attention-free backbones (models.mamba, models.hyena). TP 1 only.
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
        if self.params_dtype not in DTYPE_NAMES:
            raise ValueError(f"params_dtype must be one of {sorted(DTYPE_NAMES)}, got {self.params_dtype!r}")
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
