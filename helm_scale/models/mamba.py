"""Mamba-1 language model over codons (``model.arch: mamba``), in plain PyTorch so that it
trains on a CPU: HELM's second backbone (configs/mamba_clm.yaml, configs/mamba_mlm.yaml).

  MambaLM(config)                 models.mixer_lm.MixerLM: forward -> logits, hidden_states
      .decode(input_ids, state=None) -> (logits at the last position [b, V], MambaState)
  selective_scan(x, dt, A, B, C)  the SSM over all positions at once -> (y, last state)
  chunk_starts(delta, u, B, A)    the states entering each chunk of the chunked scan

Block (pre-norm, as HELM's with d_intermediate > 0): x += Mixer(LN(x)); x += GatedMLP(LN(x))
with the MLP ffn_hidden_size wide. The mixer is Mamba-1's selective SSM: in-projection to
2 x 2h (x and the gate z), causal depthwise conv (4 taps) and SiLU on x, input-dependent
step dt (softplus of a rank-h/16 projection), B and C (STATE_SIZE each), the diagonal
recurrence h_t = exp(dt A) h_{t-1} + dt B_t x_t, y = C_t h_t + D x_t, gated by SiLU(z).

Causal (CLM): one stack. Bidirectional (MLM): as HELM, each layer has a block over the
sequence and one over its reverse, their outputs fused by a linear layer (2h -> h). The
reverse runs within each row's length, so right padding stays behind the real tokens in
both directions and never reaches them.

The recurrence is evaluated for all positions at once by selective_scan, a chunked scan
(tensor ops over slices that hold one position of every chunk, no loop over positions) in
an autograd function written by hand: its backward recomputes the states and runs the same
scan in reverse, so a layer keeps [b, s, 2h] tensors for the backward, not
[b, s, 2h, STATE_SIZE] ones. The mamba-ssm CUDA kernels fuse the same computation; they
are not used (no CPU path, no wheels).
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
# Rows of the scan at once. On a CPU: at most STEP_BUDGET entries in a step's
# [rows, chunks, d, N] slice (256 KiB in fp32: stays in a core's cache, measured fastest).
# Elsewhere (GPU, not measured yet): at most STATE_BUDGET entries in the backward's
# [rows, s, d, N] states (256 MB in fp32): large steps keep the device busy.
STEP_BUDGET = 1 << 16
STATE_BUDGET = 1 << 26


def chunk_length(length: int) -> int:
    """Positions per chunk. A sweep costs one step of ~6 ops per position of a chunk and the
    scan over chunks one op per chunk; past ~sqrt(s) chunks the latter dominates. Measured
    on the CPU (the scan's forward and backward at d = 256, s = 256 and 1024): 32 and 64
    run alike, 16 and 128 ~10% slower."""
    return min(length, max(32, math.isqrt(length)))


def _by_step(t: torch.Tensor, chunk: int) -> torch.Tensor:
    """[b, s, k] -> [chunk, b, chunks, k], zero-padded to whole chunks: entry i holds
    position i of every chunk, contiguous. Zero padding is an identity step for both
    recurrences (decay exp(0 A) = 1, input 0), so it changes no state."""
    b, s, k = t.shape
    chunks = -(-s // chunk)
    t = F.pad(t, (0, 0, 0, chunks * chunk - s))
    return t.view(b, chunks, chunk, k).permute(2, 0, 1, 3).contiguous()


def _from_steps(t: torch.Tensor, length: int) -> torch.Tensor:
    """The inverse of _by_step: [chunk, b, chunks, k] -> [b, length, k]."""
    chunk, b, chunks, k = t.shape
    return t.permute(1, 2, 0, 3).reshape(b, chunks * chunk, k)[:, :length]


def _sweep(h, delta, u, B, A, reverse: bool, visit=None):
    """h <- exp(delta_t A) h + u_t B_t^T for each step t of a chunk, in every chunk at
    once (h [b, chunks, d, N], in place; delta, u [chunk, b, chunks, d], B [.., N]);
    ``visit(t, h)`` sees the state after step t. Every step works in place: a fresh tensor
    of this size per op would cost a page-faulting allocation each."""
    a = torch.empty_like(h)
    for t in range(len(delta) - 1, -1, -1) if reverse else range(len(delta)):
        torch.mul(delta[t].unsqueeze(-1), A, out=a).exp_()
        h.mul_(a).addcmul_(u[t].unsqueeze(-1), B[t].unsqueeze(-2))
        if visit is not None:
            visit(t, h)
    return h


def chunk_starts(delta, u, B, A, reverse: bool = False) -> torch.Tensor:
    """The state entering each chunk [b, chunks, d, N] of h_t = exp(delta_t A) h_{t-1} +
    u_t B_t^T from h = 0 before the first position (reverse: h_t from h_{t+1}, 0 after
    the last), in _by_step's layout: one sweep from zero gives each chunk's own final
    state, then a scan over the chunks carries them along (decay of a whole chunk:
    exp(A * its summed delta))."""
    chunk, b, chunks, d = delta.shape
    if chunks == 1:
        return delta.new_zeros(b, 1, d, A.shape[1])
    own = _sweep(delta.new_zeros(b, chunks, d, A.shape[1]), delta, u, B, A, reverse)
    decay = torch.exp(delta.sum(0).unsqueeze(-1) * A)
    starts = torch.zeros_like(own)
    for c in range(chunks - 2, -1, -1) if reverse else range(1, chunks):
        before = c + 1 if reverse else c - 1
        starts[:, c] = torch.addcmul(own[:, before], decay[:, before], starts[:, before])
    return starts


class _SelectiveScan(torch.autograd.Function):
    """y_t = C_t . h_t with h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t, and the last state.

    Chunked: the s positions are cut into chunks of chunk_length(s); chunk_starts finds
    the state entering every chunk (a sweep over the positions of all chunks at once, then
    a scan over chunks), and a second sweep from those states gives every h_t, contracted
    with C_t as it goes: ~2 chunk + s / chunk steps of a few ops, no [b, s, d, N] tensor.
    On a CPU, rows go in groups whose step slices [rows, chunks, d, N] hold at most
    STEP_BUDGET entries, so that a step's tensors stay in the core's cache: whole state
    tensors (16x the activations) streaming through memory made the scan ~5x slower.

    By hand rather than through autograd, which would keep [b, s, d, N] states per layer:
    this keeps the inputs ([b, s, d], [b, s, N]) and the chunks' entering states (1 /
    chunk of all), and recomputes the states in backward (as mamba-ssm's kernel does). The
    adjoint is the same recurrence run backwards: g_t = dL/dh_t + a_{t+1} g_{t+1}."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C):
        y, last = x.new_empty(x.shape), x.new_empty(x.shape[0], *A.shape)
        chunk, groups = chunk_length(x.shape[1]), _row_groups(x, A.shape[1])
        starts = []
        with torch.autocast(x.device.type, enabled=False):
            for r in groups:
                delta, u, Bs, Cs = (_by_step(t, chunk) for t in (dt[r], dt[r] * x[r], B[r], C[r]))
                out = torch.empty_like(u)

                def contract(t, h):
                    out[t] = (h @ Cs[t].unsqueeze(-1)).squeeze(-1)
                starts.append(chunk_starts(delta, u, Bs, A))
                h = _sweep(starts[-1].clone(), delta, u, Bs, A, False, contract)
                y[r], last[r] = _from_steps(out, x.shape[1]), h[:, -1]
        ctx.save_for_backward(x, dt, A, B, C, *starts)
        ctx.mark_non_differentiable(last)
        return y, last

    @staticmethod
    def backward(ctx, grad_y, _grad_last):
        x, dt, A, B, C, *starts = ctx.saved_tensors
        grad_x, grad_dt, grad_B, grad_C = (torch.empty_like(t) for t in (x, dt, B, C))
        grad_A = torch.zeros_like(A)
        with torch.autocast(x.device.type, enabled=False):
            for r, h0 in zip(_row_groups(x, A.shape[1]), starts):
                gx, gdt, gA, gB, gC = _scan_backward(x[r], dt[r], A, B[r], C[r], grad_y[r], h0)
                grad_x[r], grad_dt[r], grad_B[r], grad_C[r] = gx, gdt, gB, gC
                grad_A += gA
        return grad_x, grad_dt, grad_A, grad_B, grad_C


def _row_groups(x: torch.Tensor, state_size: int):
    """Slices of batch rows for the scan (STEP_BUDGET on a CPU, STATE_BUDGET elsewhere)."""
    b, s, d = x.shape
    if x.device.type == "cpu":
        rows = STEP_BUDGET // (-(-s // chunk_length(s)) * d * state_size)
    else:
        rows = STATE_BUDGET // (s * d * state_size)
    rows = max(1, rows)
    return [slice(i, min(i + rows, b)) for i in range(0, b, rows)]


def _scan_backward(x, dt, A, B, C, grad_y, h0):
    """Gradients for x, dt, A, B, C from one group of rows (A's: this group's share),
    given the states entering its chunks h0.

    The states h_t run forwards and the adjoint g_t backwards, and each gradient needs
    both at the same step: a forward sweep from h0 stores every h_t (the one
    [rows, s, d, N] tensor of the scan), then a backward sweep of g reads them."""
    s, chunk = x.shape[1], chunk_length(x.shape[1])
    u = dt * x
    delta, us, Bs, Cs, e = (_by_step(t, chunk) for t in (dt, u, B, C, grad_y))
    # g_t = exp(dt_{t+1} A) g_{t+1} + e_t C_t^T: the same recurrence, reversed, on dt shifted by one
    after = _by_step(F.pad(dt[:, 1:], (0, 0, 0, 1)), chunk)
    g = chunk_starts(after, e, Cs, A, reverse=True)
    states, a, q = h0.new_empty(chunk, *h0.shape), torch.empty_like(h0), torch.empty_like(h0)
    grad_Cs = torch.empty_like(Cs)
    for t in range(chunk):  # not _sweep: this one writes each state to its own slot
        torch.mul(delta[t].unsqueeze(-1), A, out=a).exp_()
        torch.mul(states[t - 1] if t else h0, a, out=states[t]).addcmul_(us[t].unsqueeze(-1), Bs[t].unsqueeze(-2))
        grad_Cs[t] = (e[t].unsqueeze(-2) @ states[t]).squeeze(-2)  # sum over d of e_t h_t

    grad_u, grad_dtA, grad_Bs = torch.empty_like(us), torch.empty_like(us), torch.empty_like(Bs)
    grad_A = torch.zeros_like(h0)
    # The decays are recomputed rather than kept from the sweep above: measured as fast,
    # and a second [rows, s, d, N] tensor less.
    torch.mul(after[-1].unsqueeze(-1), A, out=a).exp_()  # a_{t+1} at each chunk's last step
    for t in range(chunk - 1, -1, -1):
        g.mul_(a).addcmul_(e[t].unsqueeze(-1), Cs[t].unsqueeze(-2))  # g_t
        torch.mul(delta[t].unsqueeze(-1), A, out=a).exp_()  # a_t, the next step's a_{t+1}
        grad_u[t] = (g @ Bs[t].unsqueeze(-1)).squeeze(-1)
        grad_Bs[t] = (us[t].unsqueeze(-2) @ g).squeeze(-2)
        torch.mul(g, a, out=q).mul_(states[t - 1] if t else h0)  # dL/d(dt_t A) = g_t a_t h_{t-1}
        grad_A.addcmul_(q, delta[t].unsqueeze(-1))
        grad_dtA[t] = q.mul_(A).sum(-1)
    grad_u, grad_dtA = _from_steps(grad_u, s), _from_steps(grad_dtA, s)
    return (grad_u * dt, grad_dtA + grad_u * x, grad_A.sum((0, 1)),
            _from_steps(grad_Bs, s), _from_steps(grad_Cs, s))


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
