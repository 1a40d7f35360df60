"""Heads trained on frozen features: HELM's TextCNN regressor, a closed-form ridge probe,
and per-token classifiers (linear or a small convolution) for annotation.

The trained heads use minibatch Adam with early stopping on the validation loss; the
best epoch's weights are restored at the end.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm


@dataclass(frozen=True)
class FitSpec:
    lr: float = 1e-3
    batch_size: int = 32
    max_epochs: int = 30
    patience: int = 5        # epochs without a better validation loss before stopping
    weight_decay: float = 0.0

    def __post_init__(self):
        if self.lr <= 0 or self.batch_size < 1 or self.max_epochs < 1 or self.patience < 1:
            raise ValueError("need lr > 0, batch_size >= 1, max_epochs >= 1, patience >= 1")


def padded_batch(tokens: torch.Tensor, lengths: torch.Tensor, idx, min_len: int = 1):
    """Rows ``idx`` of the padded features as float32, cut to their longest length (at
    least ``min_len`` so that every convolution has one window)."""
    idx = torch.as_tensor(idx, dtype=torch.long)
    lens = lengths[idx]
    width = max(int(lens.max()), min_len)
    x = tokens[idx, :width].float()
    if x.shape[1] < width:  # the whole store is shorter than the widest kernel
        x = F.pad(x, (0, 0, 0, width - x.shape[1]))
    return x, lens


class TextCNN(nn.Module):
    """Kim's TextCNN as HELM uses it: parallel 1-d convolutions (kernels 3, 4, 5 with 100
    channels each), ReLU, max over time, concatenated, dropout, linear -> one value."""

    def __init__(self, in_dim: int, kernels=(3, 4, 5), channels: int = 100, dropout: float = 0.5):
        super().__init__()
        self.kernels = tuple(kernels)
        self.convs = nn.ModuleList(nn.Conv1d(in_dim, channels, k) for k in self.kernels)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(channels * len(self.kernels), 1)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)  # [b, H, L]
        pooled = []
        for k, conv in zip(self.kernels, self.convs):
            h = F.relu(conv(x))  # [b, C, L - k + 1]
            # Windows that start past a sequence's last full window see only padding: zero
            # them. ReLU outputs are >= 0, so a zero never beats a real window at the max.
            # A sequence shorter than k keeps its first (zero-padded) window.
            valid = (lengths - k + 1).clamp(min=1)
            keep = torch.arange(h.shape[-1], device=h.device)[None, :] < valid[:, None]
            pooled.append(h.masked_fill(~keep[:, None, :], 0.0).amax(dim=-1))
        return self.out(self.dropout(torch.cat(pooled, dim=-1))).squeeze(-1)


def fit_early_stopping(model: nn.Module, n_train: int, train_loss, val_loss, spec: FitSpec,
                       seed: int, desc: str | None = None) -> dict:
    """Adam on minibatches of the training rows; ``train_loss(idx) -> tensor`` and
    ``val_loss() -> float``. Keeps the weights of the best validation epoch. ``desc``
    shows a progress bar over the epochs."""
    opt = torch.optim.Adam(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    best, best_state, best_epoch, waited, epoch = math.inf, None, 0, 0, 0
    bar = tqdm(total=spec.max_epochs, desc=desc, unit="epoch", leave=False, disable=desc is None)
    for epoch in range(1, spec.max_epochs + 1):
        model.train()
        for idx in torch.randperm(n_train, generator=gen).split(spec.batch_size):
            opt.zero_grad(set_to_none=True)
            train_loss(idx).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            loss = float(val_loss())
        if loss < best:
            best, best_state, best_epoch, waited = loss, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            waited += 1
        bar.update(1)
        bar.set_postfix(val_loss=f"{loss:.4f}", best_epoch=best_epoch)
        if waited >= spec.patience:
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {"best_epoch": best_epoch, "epochs": epoch, "best_val_loss": best}


@torch.no_grad()
def predict_textcnn(model: TextCNN, tokens, lengths, idx, batch_size: int = 256) -> np.ndarray:
    model.eval()
    out = []
    for part in torch.as_tensor(idx, dtype=torch.long).split(batch_size):
        x, lens = padded_batch(tokens, lengths, part, max(model.kernels))
        out.append(model(x, lens))
    return torch.cat(out).numpy().astype(np.float64)


def train_textcnn(tokens: torch.Tensor, lengths: torch.Tensor, y: np.ndarray, train_idx, val_idx,
                  spec: FitSpec, seed: int, channels: int = 100, dropout: float = 0.5,
                  kernels=(3, 4, 5), desc: str | None = None) -> tuple[TextCNN, dict]:
    """Fit a TextCNN to targets ``y`` (already normalised) with MSE; ``seed`` fixes the
    initial weights, the batch order and the dropout masks."""
    with torch.random.fork_rng(devices=[]):  # the caller's global RNG stays untouched
        torch.manual_seed(seed)
        model = TextCNN(tokens.shape[-1], kernels, channels, dropout)
        target = torch.as_tensor(y, dtype=torch.float32)
        train_idx = torch.as_tensor(train_idx, dtype=torch.long)
        val_idx = torch.as_tensor(val_idx, dtype=torch.long)

        def train_loss(batch):
            rows = train_idx[batch]
            x, lens = padded_batch(tokens, lengths, rows, max(kernels))
            return F.mse_loss(model(x, lens), target[rows])

        def val_loss():
            pred = predict_textcnn(model, tokens, lengths, val_idx)
            return float(np.mean((pred - y[val_idx.numpy()]) ** 2))

        info = fit_early_stopping(model, len(train_idx), train_loss, val_loss, spec, seed, desc)
    return model, info


@dataclass
class RidgeProbe:
    """Ridge regression on standardised features; alpha chosen by validation MSE."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    alpha: float
    val_mse: float

    def predict(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale) @ self.weights + self.bias


DEFAULT_ALPHAS = tuple(10.0 ** k for k in np.arange(-3.0, 5.5, 0.5))


def fit_ridge(x_train, y_train, x_val, y_val, alphas=DEFAULT_ALPHAS) -> RidgeProbe:
    """Closed form for every alpha from one SVD: w = V diag(s / (s^2 + alpha)) U^T y."""
    x_train, x_val = np.asarray(x_train, np.float64), np.asarray(x_val, np.float64)
    y_train, y_val = np.asarray(y_train, np.float64), np.asarray(y_val, np.float64)
    mean, scale = x_train.mean(0), x_train.std(0)
    scale[scale == 0] = 1.0  # a constant feature carries nothing; avoid 0 / 0
    z_train, z_val = (x_train - mean) / scale, (x_val - mean) / scale
    bias = float(y_train.mean())
    u, s, vt = np.linalg.svd(z_train, full_matrices=False)
    uty = u.T @ (y_train - bias)
    best = None
    for alpha in sorted(alphas, reverse=True):  # on a tie the stronger penalty wins
        w = vt.T @ (s / (s * s + alpha) * uty)
        mse = float(np.mean((z_val @ w + bias - y_val) ** 2))
        if best is None or mse < best.val_mse:
            best = RidgeProbe(mean, scale, w, bias, float(alpha), mse)
    return best


class TokenHead(nn.Module):
    """Per-token classifier: ``linear`` (a probe of each hidden state alone) or ``conv``
    (a width-5 convolution, 64 channels, ReLU, then linear: lets a causal model's states
    borrow the two codons on either side)."""

    KINDS = ("linear", "conv")

    def __init__(self, in_dim: int, num_classes: int, kind: str = "linear", channels: int = 64):
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"token head must be one of {self.KINDS}, got {kind!r}")
        self.kind = kind
        if kind == "linear":
            self.net = nn.Conv1d(in_dim, num_classes, 1)
        else:
            self.net = nn.Sequential(nn.Conv1d(in_dim, channels, 5, padding=2), nn.ReLU(),
                                     nn.Conv1d(channels, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.transpose(1, 2)).transpose(1, 2)  # [b, L, classes]


@torch.no_grad()
def predict_tokens(head: TokenHead, tokens, lengths, idx, batch_size: int = 128) -> list[torch.Tensor]:
    """Arg-max class per token for the rows ``idx`` ([L_i] each, padding excluded)."""
    head.eval()
    out = []
    for part in torch.as_tensor(idx, dtype=torch.long).split(batch_size):
        x, lens = padded_batch(tokens, lengths, part)
        pred = head(x).argmax(-1)
        out.extend(pred[r, : int(lens[r])] for r in range(len(part)))
    return out


def train_token_head(tokens, lengths, labels: torch.Tensor, num_classes: int, train_idx, val_idx,
                     spec: FitSpec, seed: int, kind: str = "linear",
                     desc: str | None = None) -> tuple[TokenHead, dict]:
    """Cross-entropy over tokens whose label is not -100 (specials, padding, cut codons)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = TokenHead(tokens.shape[-1], num_classes, kind)
        train_idx = torch.as_tensor(train_idx, dtype=torch.long)
        val_idx = torch.as_tensor(val_idx, dtype=torch.long)

        def loss_on(rows):
            x, _ = padded_batch(tokens, lengths, rows)
            target = labels[rows, : x.shape[1]]
            return F.cross_entropy(head(x).reshape(-1, num_classes), target.reshape(-1),
                                   ignore_index=-100, reduction="sum"), int((target != -100).sum())

        def train_loss(batch):
            total, count = loss_on(train_idx[batch])
            return total / max(count, 1)

        def val_loss():
            total, count = 0.0, 0
            for part in val_idx.split(256):
                s, c = loss_on(part)
                total, count = total + float(s), count + c
            return total / max(count, 1)

        info = fit_early_stopping(head, len(train_idx), train_loss, val_loss, spec, seed, desc)
    return head, info
