"""Intervals: a quality claim is a mean over many documents (or a rate over many trials), with its 95% interval.

Documents are the unit of resampling (tokens within a document are not independent). Differences between
two policies are *paired*: both read the same documents, so the interval is that of the per-document
difference, much narrower than two separate intervals. A success rate over independent trials (passkey
retrieval: keys found out of keys asked) gets the Wilson score interval (:func:`wilson_interval`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

from ..errors import ConfigError

RESAMPLES = 10_000


def _clusters(n: int, groups: Sequence[int] | None) -> np.ndarray:
    """``[n_groups, n]`` 0/1 membership of each value in its group (each value alone without groups)."""
    if groups is None:
        return np.eye(n)
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ConfigError(f"groups must give one group per value: {groups.shape} for {n} values")
    return (np.unique(groups)[:, None] == groups[None, :]).astype(float)


def _draw_groups(n_groups: int, resamples: int, seed: int) -> np.ndarray:
    """``[resamples, n_groups]``: how often each group is drawn in each bootstrap resample."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_groups, size=(resamples, n_groups))
    return np.stack([np.bincount(row, minlength=n_groups) for row in idx]).astype(float)


def _percentiles(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_interval(
    values: Sequence[float] | np.ndarray,
    *,
    groups: Sequence[int] | None = None,
    confidence: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[float, float | None, float | None]:
    """``(mean, low, high)``: the mean over sequences and its percentile bootstrap interval.

    ``groups`` (one id per value) resamples whole groups: several windows cut from one document are one
    document's evidence, not independent samples (a cluster bootstrap). With fewer than 2 groups there is
    no interval (None, None).
    """
    data = np.asarray(values, dtype=float)
    mean = float(data.mean())
    members = _clusters(len(data), groups)
    if len(members) < 2:
        return mean, None, None
    counts = _draw_groups(len(members), resamples, seed) @ members  # [resamples, n]: weight of each value
    draws = (counts @ data) / counts.sum(axis=1)
    return (mean, *_percentiles(draws, confidence))


def paired_difference(a: Sequence[float], b: Sequence[float], **kwargs) -> tuple[float, float | None, float | None]:
    """Mean of ``a - b`` over the same sequences, with its bootstrap interval (``groups`` as
    :func:`bootstrap_interval`)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values must cover the same documents: {a.shape} vs {b.shape}")
    return bootstrap_interval(a - b, **kwargs)


def gap_closed(candidate: Sequence[float], other: Sequence[float], full: Sequence[float], *,
               groups: Sequence[int] | None = None, resamples: int = RESAMPLES,
               seed: int = 0) -> tuple[float, float | None, float | None]:
    """``(other - candidate) / (other - full)`` on mean per-sequence nll, documents resampled jointly (whole
    ``groups`` when given): the share of the gap between another policy and the full cache that the
    candidate closes."""
    rows = np.stack([np.asarray(candidate, float), np.asarray(other, float), np.asarray(full, float)], axis=1)

    def stat(means: np.ndarray) -> np.ndarray:
        c, o, f = means[..., 0], means[..., 1], means[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(o != f, (o - c) / (o - f), np.nan)

    estimate = float(stat(rows.mean(axis=0)))
    members = _clusters(len(rows), groups)
    if len(members) < 2:
        return estimate, None, None
    counts = _draw_groups(len(members), resamples, seed) @ members
    draws = stat((counts @ rows) / counts.sum(axis=1, keepdims=True))
    return (estimate, *_percentiles(draws, 0.95))


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """``(low, high)``: the Wilson score interval of a success rate ``successes / n``.

    Unlike the normal approximation it stays inside [0, 1] and does not collapse to a point at 0/n or n/n:
    0/10 gives (0, 0.278), 10/10 gives (0.722, 1), 5/10 gives (0.237, 0.763) at 95%. Raises
    :class:`~lococo.errors.ConfigError` when ``n < 1``, ``successes`` is outside ``[0, n]``, either is not a
    whole number, or ``confidence`` is not in (0, 1).
    """
    for name, value in (("successes", successes), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer | float) or value != int(value):
            raise ConfigError(f"{name} must be a whole number, got {value!r}")
    successes, n = int(successes), int(n)
    if n < 1:
        raise ConfigError(f"a Wilson interval needs n >= 1 trials, got n = {n}")
    if not 0 <= successes <= n:
        raise ConfigError(f"successes must be in [0, n] = [0, {n}], got {successes}")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)  # 1.959963984540054 at 95%
    p = successes / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high


TARGET_WIDTH_NATS = 0.005
"""Width of a paired difference's 95% interval that resolves 0.5% of perplexity (exp(0.005) = 1.005)."""


def docs_for_width(low: float | None, high: float | None, n: int, target: float = TARGET_WIDTH_NATS) -> int | None:
    """Documents needed for an interval of width ``target``, projected from one of width ``high - low`` over
    ``n`` documents (widths shrink as 1/sqrt(n); with windows, count documents, not windows). None without
    an interval."""
    if low is None or high is None or n < 2:
        return None
    return max(n, math.ceil(n * ((high - low) / target) ** 2))
