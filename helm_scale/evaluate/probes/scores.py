"""Scores for the probes, hand-written so their tie and empty-class rules are explicit:
Spearman's rho (average ranks for ties), accuracy, macro F1, mean and std over seeds."""
from __future__ import annotations

import math

import numpy as np


def average_ranks(x) -> np.ndarray:
    """1-based ranks of x; tied values share the mean of the ranks they span."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"ranks need a 1-d array, got shape {x.shape}")
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # Runs of equal values: each run gets the mean of positions first+1 .. last+1.
    starts = np.r_[True, sorted_x[1:] != sorted_x[:-1]]
    run_id = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.r_[first[1:], len(x)] - 1
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = (first + last)[run_id] / 2.0 + 1.0
    return ranks


def spearman(x, y) -> float:
    """Spearman's rho: Pearson correlation of the average ranks. NaN when either side is
    constant (the correlation is undefined), or with fewer than two pairs."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"spearman needs equal shapes, got {x.shape} and {y.shape}")
    if len(x) < 2 or np.isnan(x).any() or np.isnan(y).any():
        return math.nan
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / denom) if denom > 0 else math.nan


def accuracy(y_true, y_pred) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError("accuracy needs two non-empty arrays of one shape")
    return float((y_true == y_pred).mean())


def per_class_f1(y_true, y_pred, labels=None) -> dict[int, float]:
    """F1 = 2TP / (2TP + FP + FN) per class. ``labels`` default: every class that occurs in
    either array (a class predicted but never true scores 0; one in neither is left out)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError("F1 needs two non-empty arrays of one shape")
    if labels is None:
        labels = np.union1d(np.unique(y_true), np.unique(y_pred))
    out = {}
    for c in labels:
        tp = int(((y_true == c) & (y_pred == c)).sum())
        wrong = int(((y_true == c) != (y_pred == c)).sum())  # FP + FN
        out[int(c)] = 2 * tp / (2 * tp + wrong) if tp + wrong else 0.0
    return out


def macro_f1(y_true, y_pred, labels=None) -> float:
    """Unweighted mean of the per-class F1 scores (see :func:`per_class_f1`)."""
    scores = per_class_f1(y_true, y_pred, labels)
    return float(np.mean(list(scores.values())))


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value), NaNs ignored."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0
