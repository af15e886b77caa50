"""Baseline policies under the same budget as LoCoCo (issue: baselines).

Every policy here keeps exactly ``mem_size`` slots per row and KV head, chooses them with one vectorised
selection over ``[batch, kv_heads, L]`` (no Python loop over rows or heads) and never keeps a padding slot
while a row has enough real tokens. The references and the cost of each step are in ``docs/policies.md``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from . import register_policy
from .base import (
    Folded,
    Policy,
    masked,
    positions_like,
    recency_scores,
    select,
    summed_over_layer,
    topk_in_order,
)

POS_INF = float("inf")


# --------------------------------------------------------------------------------------------------
# Helpers: which slots are the first / last n real tokens of each row.


def _valid_or_ones(valid: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """``valid [b, L]``, or all True for ``like [b, h, L, ...]`` when there is no padding."""
    if valid is not None:
        return valid
    return torch.ones(like.shape[0], like.shape[2], dtype=torch.bool, device=like.device)


def first_valid(valid: torch.Tensor | None, like: torch.Tensor, n: int) -> torch.Tensor:
    """Mask ``[b, 1, L]`` of the first ``n`` real tokens of each row (``like``: the keys)."""
    v = _valid_or_ones(valid, like)
    return (v & (v.cumsum(-1) <= n))[:, None, :]


def last_valid(valid: torch.Tensor | None, like: torch.Tensor, n: int) -> torch.Tensor:
    """Mask ``[b, 1, L]`` of the last ``n`` real tokens of each row (``like``: the keys)."""
    v = _valid_or_ones(valid, like)
    from_end = v.flip(-1).cumsum(-1).flip(-1)  # real tokens at this position or later
    return (v & (from_end <= n))[:, None, :]


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{name} must be in [{low}, {high}], got {value}")


# --------------------------------------------------------------------------------------------------


@register_policy
class FullPolicy(Policy):
    """No compression: the reference every other policy is measured against."""

    name = "full"
    compresses = False
    uses_mem_size = False

    def __init__(self, mem_size: int | None = None, buffer: int = 0) -> None:
        del mem_size  # keeps every token: accepted so that one loop can build every policy, and ignored
        super().__init__(mem_size=1, buffer=buffer)

    def __repr__(self) -> str:
        return "FullPolicy()"

    def compress(self, keys, values, scores, valid):  # never called
        return Folded(keys, values, scores, positions_like(keys[..., 0]).long())


@register_policy
class WindowPolicy(Policy):
    """The most recent ``mem_size`` tokens."""

    name = "window"
    contiguous = True

    def compress(self, keys, values, scores, valid):
        idx = topk_in_order(recency_scores(keys[..., 0], valid), self.mem_size)
        return select(keys, values, scores, idx)


@register_policy
class StreamingPolicy(Policy):
    """StreamingLLM: the first ``n_sink`` real tokens of each row (attention sinks) plus the most recent.

    StreamingLLM's positions counted inside the cache are the cache's ``reindex_positions=True``, which works
    for every policy and is the default of every heuristic on a rotary model.
    """

    name = "streaming"

    def __init__(self, mem_size: int = 128, buffer: int = 16, n_sink: int = 4) -> None:
        super().__init__(mem_size, buffer)
        _check_range("n_sink", n_sink, 0, self.mem_size)
        self.n_sink = int(n_sink)

    def compress(self, keys, values, scores, valid):
        rank = recency_scores(keys[..., 0], valid).masked_fill(first_valid(valid, keys, self.n_sink), POS_INF)
        return select(keys, values, scores, topk_in_order(rank, self.mem_size))


@register_policy
class H2OPolicy(Policy):
    """H2O: ``heavy_ratio * mem_size`` heavy hitters by accumulated attention, the rest the most recent."""

    name = "h2o"
    score_mode = "accumulated"

    def __init__(self, mem_size: int = 128, buffer: int = 16, heavy_ratio: float = 0.5) -> None:
        super().__init__(mem_size, buffer)
        _check_range("heavy_ratio", heavy_ratio, 0.0, 1.0)
        self.heavy_ratio = float(heavy_ratio)
        self.n_heavy = int(round(heavy_ratio * self.mem_size))
        self.n_recent = self.mem_size - self.n_heavy

    def compress(self, keys, values, scores, valid):
        rank = masked(scores, valid).masked_fill(last_valid(valid, keys, self.n_recent), POS_INF)
        return select(keys, values, scores, topk_in_order(rank, self.mem_size))


class TopScorePolicy(Policy):
    """Keep the ``mem_size`` slots with the highest scores (subclasses choose which scores)."""

    def ranking(self, scores: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """The ``[b, h, L]`` values whose top ``mem_size`` are kept (padding at -inf)."""
        return masked(scores, valid)

    def compress(self, keys, values, scores, valid):
        return select(keys, values, scores, topk_in_order(self.ranking(scores, valid), self.mem_size))


@register_policy
class H2OLastPolicy(TopScorePolicy):
    """The LoCoCo authors' H2O baseline: top ``mem_size`` by the column sums of the latest forward."""

    name = "h2o-last"
    score_mode = "last"


@register_policy
class TOVAPolicy(TopScorePolicy):
    """TOVA: top ``mem_size`` by the attention of the latest query, averaged over heads.

    With ``layer_average`` (default, as in the paper) the attention is averaged over all the heads of the
    layer, so every KV head keeps the same tokens; otherwise each KV head ranks by the attention of its own
    group of query heads.
    """

    name = "tova"
    score_mode = "window"
    score_window = 1
    # absolute within the model's context, far slots moved below it: against re-indexed -0.013 nats per token
    # [-0.017, -0.010] at 32K (4 held-out sequences), perplexity 36.3 -> 35.2 at 128K (reports/positions/clamped.md)
    position_scheme = "clamped"

    def __init__(self, mem_size: int = 128, buffer: int = 16, layer_average: bool = True) -> None:
        super().__init__(mem_size, buffer)
        self.layer_average = bool(layer_average)

    def ranking(self, scores, valid):
        if self.layer_average:
            scores = summed_over_layer(scores)
        return masked(scores, valid)


@register_policy
class SnapKVPolicy(Policy):
    """SnapKV: the last ``score_window`` tokens plus the top of the rest by pooled window attention.

    Scores are the column sums of the observation window (the last ``score_window`` queries), pooled
    along positions (``pooling`` "avg" or "max", odd ``kernel_size``, same padding) over the tokens
    before the window. If the window alone fills the budget, the most recent ``mem_size`` slots are kept.
    """

    name = "snapkv"
    score_mode = "window"

    def __init__(
        self,
        mem_size: int = 128,
        buffer: int = 16,
        score_window: int = 32,
        kernel_size: int = 7,
        pooling: str = "avg",
    ) -> None:
        super().__init__(mem_size, buffer)
        if score_window < 1:
            raise ConfigError(f"score_window must be >= 1, got {score_window}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size must be a positive odd number, got {kernel_size}")
        if pooling not in ("avg", "max"):
            raise ConfigError(f"pooling must be 'avg' or 'max', got {pooling!r}")
        self.score_window = int(score_window)
        self.kernel_size = int(kernel_size)
        self.pooling = pooling

    def pooled(self, scores: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """Scores ``[b, h, L]`` pooled along positions over the first ``L - score_window`` slots."""
        b, h, length = scores.shape
        cut = length - self.score_window
        s = scores.float() if valid is None else scores.float().masked_fill(~valid[:, None, :], 0.0)
        pool = F.avg_pool1d if self.pooling == "avg" else F.max_pool1d
        head = pool(s[..., :cut].reshape(b * h, 1, cut), self.kernel_size, 1, self.kernel_size // 2)
        return torch.cat([head.reshape(b, h, cut), s[..., cut:]], dim=-1)

    def compress(self, keys, values, scores, valid):
        if self.score_window >= self.mem_size:
            rank = recency_scores(keys[..., 0], valid)
        else:
            window = last_valid(valid, keys, self.score_window)
            rank = masked(self.pooled(scores, valid), valid).masked_fill(window, POS_INF)
        return select(keys, values, scores, topk_in_order(rank, self.mem_size))


@register_policy
class RandomPolicy(Policy):
    """Uniform random eviction: ``mem_size`` random real slots per row and head, in order (seeded)."""

    name = "random"
    stateless = False  # one generator for every cache of the policy

    def __init__(self, mem_size: int = 128, buffer: int = 16, seed: int = 0) -> None:
        super().__init__(mem_size, buffer)
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def compress(self, keys, values, scores, valid):
        noise = torch.rand(keys.shape[:3], generator=self.generator).to(keys.device)
        return select(keys, values, scores, topk_in_order(masked(noise, valid), self.mem_size))


@register_policy
class MeanPoolPolicy(Policy):
    """Non-learned merge: the last ``mem_size - n_merged`` tokens exact, the older ones averaged.

    The older real tokens are split into ``n_merged`` contiguous groups of nearly equal size (sizes
    differ by at most one) and each group becomes the mean of its keys and of its values. Padding is
    ignored. The merged slots come first, then the exact recent ones.
    """

    name = "meanpool"

    def __init__(self, mem_size: int = 128, buffer: int = 16, n_merged: int | None = None) -> None:
        super().__init__(mem_size, buffer)
        n_merged = self.mem_size // 2 if n_merged is None else int(n_merged)
        _check_range("n_merged", n_merged, 0, self.mem_size)
        self.n_merged = n_merged

    def merge_weights(self, valid: torch.Tensor | None, keys: torch.Tensor) -> torch.Tensor:
        """Averaging weights ``[b, n_merged, L]`` over the older real tokens (rows sum to 1 or 0)."""
        n_recent = self.mem_size - self.n_merged
        older = _valid_or_ones(valid, keys) & ~last_valid(valid, keys, n_recent)[:, 0]
        n_older = older.sum(-1, keepdim=True).clamp(min=1)
        group = (older.cumsum(-1) - 1).clamp(min=0) * self.n_merged // n_older  # [b, L]
        slots = torch.arange(self.n_merged, device=keys.device)
        member = (group[:, None, :] == slots[None, :, None]) & older[:, None, :]  # [b, C, L]
        weights = member.float()
        return weights / weights.sum(-1, keepdim=True).clamp(min=1.0)

    def compress(self, keys, values, scores, valid):
        recent = topk_in_order(recency_scores(keys[..., 0], valid), self.mem_size - self.n_merged)
        k_recent, v_recent, s_recent, _ = select(keys, values, scores, recent)
        weights = self.merge_weights(valid, keys)
        if valid is not None:  # weight 0 must not meet a non-finite padding slot (0 * nan = nan)
            pad = ~valid[:, None, :, None]
            keys, values = keys.masked_fill(pad, 0.0), values.masked_fill(pad, 0.0)
        k_merged = torch.einsum("bcl,bhld->bhcd", weights, keys.float()).to(keys.dtype)
        v_merged = torch.einsum("bcl,bhld->bhcd", weights, values.float()).to(values.dtype)
        kept_scores = s_recent
        if scores is not None:  # carried for completeness (no score mode needs them yet)
            kept_scores = torch.cat([torch.einsum("bcl,bhl->bhc", weights, scores.float()), s_recent], dim=-1)
        middle = (weights.cumsum(-1) < 0.5).sum(-1).clamp(max=keys.shape[2] - 1)  # each group's middle token
        sources = torch.cat([middle[:, None, :].expand(-1, keys.shape[1], -1), recent], dim=-1)
        return Folded(torch.cat([k_merged, k_recent], dim=2), torch.cat([v_merged, v_recent], dim=2), kept_scores,
                      sources)
