"""Mamba-1 language model over codons (``model.arch: mamba``), in plain PyTorch so that it
trains on a CPU: HELM's second backbone (configs/mamba_clm.yaml, configs/mamba_mlm.yaml).

  MambaLM(config)                 models.mixer_lm.MixerLM: forward -> logits, hidden_states
      .decode(input_ids, state=None) -> (logits at the last position [b, V], MambaState)
  selective_scan(x, dt, A, B, C)  the SSM over all positions at once -> (y, last state)
  linear_scan(a, b)               h_t = a_t * h_{t-1} + b_t along dim 1 (h_{-1} = 0), chunked

Block (pre-norm, as HELM's with d_intermediate > 0): x += Mixer(LN(x)); x += GatedMLP(LN(x))
with the MLP ffn_hidden_size wide. The mixer is Mamba-1's selective SSM: in-projection to
2 x 2h (x and the gate z), causal depthwise conv (4 taps) and SiLU on x, input-dependent
step dt (softplus of a rank-h/16 projection), B and C (STATE_SIZE each), the diagonal
recurrence h_t = exp(dt A) h_{t-1} + dt B_t x_t, y = C_t h_t + D x_t, gated by SiLU(z).

Causal (CLM): one stack. Bidirectional (MLM): as HELM, each layer has a block over the
sequence and one over its reverse, their outputs fused by a linear layer (2h -> h). The
reverse runs within each row's length, so right padding stays behind the real tokens in
both directions and never reaches them.

The recurrence is evaluated for all positions at once by linear_scan, a chunked scan
(about 2 sqrt(s) tensor ops, no loop over positions), inside selective_scan, an autograd
function written by hand: its backward recomputes the states and runs the same scan in
reverse, so a layer keeps [b, s, 2h] tensors for the backward, not [b, s, 2h, STATE_SIZE]
ones. The mamba-ssm CUDA kernels fuse the same computation; they are not used (no CPU
path, no wheels).
decode() runs the recurrence one token at a time with a constant-size state per layer
(conv window and SSM state): generation costs one position per token, not the prefix.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from helm_scale.models.config import ModelConfig
from helm_scale.models.layers import DTYPES
from helm_scale.models.mixer_lm import MixerLM, residual_scale_, wide

STATE_SIZE = 16   # N, Mamba's default d_state
EXPAND = 2        # inner width = EXPAND * hidden_size
CONV_TAPS = 4     # d_conv
DT_RANGE = (1e-3, 1e-1)  # initial steps, log-uniform (Mamba's dt_min, dt_max)
STATE_BUDGET = 1 << 26   # most entries of a [rows, s, d, N] state tensor at once (256 MB in fp32)


def linear_scan(a: torch.Tensor, b: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """All states of h_t = a_t * h_{t-1} + b_t (elementwise, along dim 1, h_{-1} = 0);
    reverse: h_t = a_t * h_{t+1} + b_t from the end (h_s = 0), without flipped copies.

    Chunked: the sequence is cut into ~sqrt(s) chunks of ~sqrt(s) steps; one pass runs the
    recurrence inside every chunk at once (from a zero state, keeping the running product
    of a), a second carries each chunk's last state into the next (state += product x
    carry). About 2 sqrt(s) tensor ops over [b, s / chunk, ...] slices instead of s over
    [b, ...] ones, O(s) work, and only products of decays in [0, 1]: no log-space overflow."""
    length = a.shape[1]
    chunk = max(1, math.isqrt(length))
    chunks = -(-length // chunk)
    pad = chunks * chunk - length
    if pad:  # identity steps (a = 1, b = 0) fill the last chunk (the first, in reverse)
        ones, zeros = a.new_ones(a.shape[0], pad, *a.shape[2:]), b.new_zeros(b.shape[0], pad, *b.shape[2:])
        a = torch.cat([ones, a] if reverse else [a, ones], dim=1)
        b = torch.cat([zeros, b] if reverse else [b, zeros], dim=1)
    a = a.reshape(a.shape[0], chunks, chunk, *a.shape[2:])
    h = b.reshape(a.shape).clone()
    decay = a.clone()  # running product of a inside each chunk
    steps, edge = (range(chunk - 2, -1, -1), 0) if reverse else (range(1, chunk), -1)
    for t in steps:
        before = t + 1 if reverse else t - 1
        h[:, :, t].addcmul_(a[:, :, t], h[:, :, before])
        decay[:, :, t].mul_(decay[:, :, before])
    for c in (range(chunks - 2, -1, -1) if reverse else range(1, chunks)):
        before = c + 1 if reverse else c - 1
        h[:, c].addcmul_(decay[:, c], h[:, before, edge].unsqueeze(1))
    h = h.flatten(1, 2)
    return h[:, pad:] if reverse else h[:, :length]


def _ssm_states(x, dt, A, B):
    """Decays a = exp(dt A) and all states h [b, s, d, N] of the selective recurrence."""
    a = torch.exp(dt[..., None] * A)
    return a, linear_scan(a, (dt * x)[..., None] * B[:, :, None, :])


def _row_groups(x: torch.Tensor, state_size: int):
    """Slices of batch rows whose states [rows, s, d, N] hold at most STATE_BUDGET entries:
    the memory of a layer's scan is then bounded whatever the batch (HELM's 128 x 444 rows
    at width 512 would otherwise need ~2 GB per state tensor, several at once)."""
    b, s, d = x.shape
    rows = max(1, STATE_BUDGET // (s * d * state_size))
    return [slice(i, min(i + rows, b)) for i in range(0, b, rows)]


class _SelectiveScan(torch.autograd.Function):
    """y_t = C_t . h_t with h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t, and the last state.

    By hand rather than through autograd: autograd would keep several [b, s, d, N]
    tensors per layer for the backward; this keeps only the inputs ([b, s, d] and
    [b, s, N]) and recomputes the states in backward (as mamba-ssm's kernel does), a group
    of rows at a time. The adjoint is the same recurrence run backwards:
    g_t = dL/dh_t + a_{t+1} g_{t+1}."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C):
        y, last = x.new_empty(x.shape), x.new_empty(x.shape[0], *A.shape)
        with torch.autocast(x.device.type, enabled=False):
            for r in _row_groups(x, A.shape[1]):
                _, h = _ssm_states(x[r], dt[r], A, B[r])
                y[r] = torch.einsum("bsdn,bsn->bsd", h, C[r])
                last[r] = h[:, -1]
        ctx.save_for_backward(x, dt, A, B, C)
        ctx.mark_non_differentiable(last)
        return y, last

    @staticmethod
    def backward(ctx, grad_y, _grad_last):
        x, dt, A, B, C = ctx.saved_tensors
        grad_x, grad_dt, grad_B, grad_C = (torch.empty_like(t) for t in (x, dt, B, C))
        grad_A = torch.zeros_like(A)
        with torch.autocast(x.device.type, enabled=False):
            for r in _row_groups(x, A.shape[1]):
                gx, gdt, gA, gB, gC = _scan_backward(x[r], dt[r], A, B[r], C[r], grad_y[r])
                grad_x[r], grad_dt[r], grad_B[r], grad_C[r] = gx, gdt, gB, gC
                grad_A += gA
        return grad_x, grad_dt, grad_A, grad_B, grad_C


def _scan_backward(x, dt, A, B, C, grad_y):
    """Gradients for x, dt, A, B, C from one group of rows (A's: this group's share)."""
    a, h = _ssm_states(x, dt, A, B)
    grad_C = torch.einsum("bsd,bsdn->bsn", grad_y, h)
    a_next = torch.cat([a[:, 1:], torch.zeros_like(a[:, :1])], dim=1)
    g = linear_scan(a_next, grad_y[..., None] * C[:, :, None, :], reverse=True)
    del a_next
    grad_dtA = g * a  # through a = exp(dt A): times h_{t-1}, which is 0 at t = 0
    grad_dtA[:, 1:] *= h[:, :-1]
    grad_dtA[:, 0] = 0
    grad_u = torch.einsum("bsdn,bsn->bsd", g, B)  # u = dt x
    grad_B = torch.einsum("bsdn,bsd->bsn", g, dt * x)
    grad_dt = torch.einsum("bsdn,dn->bsd", grad_dtA, A) + grad_u * x
    grad_A = torch.einsum("bsdn,bsd->dn", grad_dtA, dt)
    return grad_u * dt, grad_dt, grad_A, grad_B, grad_C


def selective_scan(x, dt, A, B, C) -> tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1's selective SSM without the D skip: x, dt [b, s, d]; A [d, N]; B, C [b, s, N]
    -> (y [b, s, d], the state after the last position [b, d, N])."""
    return _SelectiveScan.apply(x, dt, A, B, C)


class MambaMixer(nn.Module):
    def __init__(self, h: int, dtype: torch.dtype):
        super().__init__()
        d, self.dt_rank = EXPAND * h, math.ceil(h / 16)
        self.in_proj = nn.Linear(h, 2 * d, bias=False, dtype=dtype)
        self.conv = nn.Conv1d(d, d, CONV_TAPS, groups=d, padding=CONV_TAPS - 1, dtype=dtype)
        self.x_proj = nn.Linear(d, self.dt_rank + 2 * STATE_SIZE, bias=False, dtype=dtype)
        self.dt_proj = nn.Linear(self.dt_rank, d, dtype=dtype)
        # A = -exp(A_log) = -(1, 2, ..., N) in every channel (S4D-real), learned in log space.
        # Flat [d * N]: 1-D parameters get no weight decay (build_param_groups), as in Mamba,
        # where decay would pull every A towards -1.
        self.A_log = nn.Parameter(torch.arange(1, STATE_SIZE + 1, dtype=torch.float32).log().repeat(d).to(dtype))
        self.D = nn.Parameter(torch.ones(d, dtype=dtype))
        self.out_proj = nn.Linear(d, h, bias=False, dtype=dtype)
        with torch.no_grad():  # Mamba's init: steps log-uniform in DT_RANGE through softplus
            nn.init.uniform_(self.dt_proj.weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
            lo, hi = math.log(DT_RANGE[0]), math.log(DT_RANGE[1])
            dt = torch.exp(torch.rand(d) * (hi - lo) + lo).clamp(min=1e-4)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)

    def _ssm_inputs(self, x: torch.Tensor):
        """x, dt [b, s, d], A [d, N], B and C [b, s, N], in fp32 (at least)."""
        dt, B, C = self.x_proj(x).split([self.dt_rank, STATE_SIZE, STATE_SIZE], dim=-1)
        A = -torch.exp(wide(self.A_log)).view(-1, STATE_SIZE)
        return wide(x), F.softplus(wide(self.dt_proj(dt))), A, wide(B), wide(C)

    def forward(self, u: torch.Tensor, state=None):
        """u [b, s, h] -> (y [b, s, h], state after the last position). With ``state`` (from
        a previous call) the positions continue from it one at a time (decoding)."""
        s = u.shape[1]
        x, z = self.in_proj(u).chunk(2, dim=-1)
        if state is None:
            xc = F.silu(self.conv(x.transpose(1, 2))[..., :s].transpose(1, 2))
            y, last = selective_scan(*self._ssm_inputs(xc))
            window = F.pad(x, (0, 0, max(CONV_TAPS - 1 - s, 0), 0))[:, -(CONV_TAPS - 1):]
            state = (window, last)
        else:
            ys, xcs = [], []
            window, h_last = state
            for t in range(s):  # decoding: typically s == 1
                window = torch.cat([window, x[:, t:t + 1]], dim=1)  # [b, taps, d]
                xc = F.silu(torch.einsum("bkd,dk->bd", window, self.conv.weight[:, 0]) + self.conv.bias)
                x1, dt, A, B, C = (v.squeeze(1) for v in self._ssm_inputs(xc[:, None]))
                h_last = torch.exp(dt[..., None] * A) * h_last + (dt * x1)[..., None] * B[:, None, :]
                ys.append((h_last * C[:, None, :]).sum(-1))
                xcs.append(xc)
                window = window[:, 1:]
            y, xc, state = torch.stack(ys, 1), torch.stack(xcs, 1), (window, h_last)
        y = (y + wide(xc) * wide(self.D)).to(u.dtype) * F.silu(z)
        return self.out_proj(y), state


class GatedMLP(nn.Module):
    """SwiGLU, as mamba-ssm's GatedMLP: fc2(a * silu(g)) with [a, g] = fc1(x)."""

    def __init__(self, h: int, f: int, dtype: torch.dtype):
        super().__init__()
        self.fc1 = nn.Linear(h, 2 * f, bias=False, dtype=dtype)
        self.fc2 = nn.Linear(f, h, bias=False, dtype=dtype)

    def forward(self, x):
        a, g = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(a * F.silu(g))


class MambaBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, dtype = cfg.hidden_size, DTYPES[cfg.params_dtype]
        self.dropout = cfg.dropout
        self.norm1 = nn.LayerNorm(h, eps=cfg.layernorm_eps, dtype=dtype)
        self.mixer = MambaMixer(h, dtype)
        self.norm2 = nn.LayerNorm(h, eps=cfg.layernorm_eps, dtype=dtype)
        self.mlp = GatedMLP(h, cfg.ffn_hidden_size, dtype)
        residual_scale_(self.mixer.out_proj, cfg.num_layers)
        residual_scale_(self.mlp.fc2, cfg.num_layers)

    def decode(self, x, state=None):
        y, state = self.mixer(self.norm1(x), state)
        x = x + F.dropout(y, self.dropout, self.training)
        return x + F.dropout(self.mlp(self.norm2(x)), self.dropout, self.training), state

    def forward(self, x, keep=None):
        return self.decode(x)[0]


def reverse_rows(x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Each row's real tokens in reverse order, its right padding left where it is
    (its own inverse). keep: [b, s] bool, True on a prefix of each row; None: no padding."""
    if keep is None:
        return x.flip(1)
    s = x.shape[1]
    t = torch.arange(s, device=x.device)
    lengths = keep.sum(dim=1, keepdim=True)
    index = torch.where(t < lengths, lengths - 1 - t, t)
    return x.gather(1, index[..., None].expand_as(x))


class BidirectionalMambaLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h, dtype = cfg.hidden_size, DTYPES[cfg.params_dtype]
        self.forward_block, self.backward_block = MambaBlock(cfg), MambaBlock(cfg)
        self.fuse = nn.Linear(2 * h, h, dtype=dtype)
        with torch.no_grad():  # starts as the mean of both directions: depth keeps the stream's scale
            eye = torch.eye(h, dtype=dtype)
            self.fuse.weight.copy_(0.5 * torch.cat([eye, eye], dim=1))
            self.fuse.bias.zero_()

    def forward(self, x, keep=None):
        ahead = self.forward_block(x)
        behind = reverse_rows(self.backward_block(reverse_rows(x, keep)), keep)
        return self.fuse(torch.cat([ahead, behind], dim=-1))


@dataclass
class MambaState:
    """What decoding carries: the next position and each layer's (conv window, SSM state)."""

    position: int
    layers: list[tuple[torch.Tensor, torch.Tensor]]

    def rows(self, keep: torch.Tensor) -> MambaState:
        return MambaState(self.position, [(w[keep], h[keep]) for w, h in self.layers])


class MambaLM(MixerLM):
    def __init__(self, config: ModelConfig):
        super().__init__(config, "mamba")
        layer = MambaBlock if self.causal else BidirectionalMambaLayer
        self.layers.extend(layer(config) for _ in range(config.num_layers))

    def sequence_flops(self, seq_len: int) -> float:
        # Per token, layer and state entry: exp, dt*A, dt*B*x (3), the update (2), C.h (2);
        # forward and backward (~2x) as 3x. Bidirectional layers run two blocks.
        blocks = self.config.num_layers * (1 if self.causal else 2)
        return 3.0 * 9 * blocks * EXPAND * self.config.hidden_size * STATE_SIZE

    @torch.no_grad()
    def decode(self, input_ids: torch.Tensor, state: MambaState | None = None):
        """Logits after the last of ``input_ids`` [b, s] and the state to continue from.
        state None: the ids are a prompt from position 0 (the scan over all of them at once)."""
        if not self.causal:
            raise ValueError("decoding needs a causal (CLM) Mamba; this one is bidirectional")
        start = 0 if state is None else state.position
        x = self.embed(input_ids, start=start)
        layers = []
        for i, block in enumerate(self.layers):
            x, layer_state = block.decode(x, None if state is None else state.layers[i])
            layers.append(layer_state)
        return self.logits(self.final_norm(x[:, -1])), MambaState(start + input_ids.shape[1], layers)
