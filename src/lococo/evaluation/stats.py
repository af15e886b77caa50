"""Intervals over documents: a quality claim is a mean over many documents, with its 95% interval.

Documents are the unit of resampling (tokens within a document are not independent). Differences between
two policies are *paired*: both read the same documents, so the interval is that of the per-document
difference, much narrower than two separate intervals.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RESAMPLES = 10_000


def bootstrap_interval(
    values: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[float, float | None, float | None]:
    """``(mean, low, high)``: the mean over documents and its percentile bootstrap interval.

    With fewer than 2 documents there is no interval (None, None).
    """
    data = np.asarray(values, dtype=float)
    mean = float(data.mean())
    if len(data) < 2:
        return mean, None, None
    rng = np.random.default_rng(seed)
    draws = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return mean, float(low), float(high)


def paired_difference(a: Sequence[float], b: Sequence[float], **kwargs) -> tuple[float, float | None, float | None]:
    """Mean of ``a - b`` over the same documents, with its bootstrap interval."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values must cover the same documents: {a.shape} vs {b.shape}")
    return bootstrap_interval(a - b, **kwargs)


def gap_closed(candidate: Sequence[float], other: Sequence[float], full: Sequence[float], *,
               resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float | None, float | None]:
    """``(other - candidate) / (other - full)`` on mean per-document nll, documents resampled jointly:
    the share of the gap between another policy and the full cache that the candidate closes."""
    rows = np.stack([np.asarray(candidate, float), np.asarray(other, float), np.asarray(full, float)], axis=1)

    def stat(x: np.ndarray) -> float:
        c, o, f = x.mean(axis=0)
        return (o - c) / (o - f) if o != f else float("nan")

    estimate = stat(rows)
    if len(rows) < 2:
        return estimate, None, None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(rows), size=(resamples, len(rows)))
    draws = np.array([stat(rows[i]) for i in idx])
    low, high = np.nanpercentile(draws, [2.5, 97.5])
    return float(estimate), float(low), float(high)
