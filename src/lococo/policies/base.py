"""The one interface every cache policy implements, and the tensor helpers they share.

A policy answers one question: given the stored keys/values of a layer (more than ``mem_size`` of them),
which ``mem_size`` slots remain? It never decides *when* to compress (the cache layer does, lazily,
as in docs/method.md). It is given every row of the batch; rows the cache is not compressing (a padded row
with too few real tokens) are computed too and discarded by the cache, so the policy needs no row logic.

Shapes: keys/values ``[batch, kv_heads, L, head_dim]``, scores ``[batch, kv_heads, L]`` (or None),
valid ``[batch, L]`` bool (or None when every slot holds a real token).
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch

from ..errors import ConfigError

NEG_INF = float("-inf")


class Folded(NamedTuple):
    """What one compression returns: ``mem_size`` slots per row and KV head.

    ``sources [b, h, mem_size]`` (long) names, for each kept slot, the stored slot it stands for: itself for
    a kept token; for a merged slot, the token that dominates it (LoCoCo: its selected top-C token;
    mean-pooling: its group's middle token). The cache uses it to carry each slot's position (for
    re-indexed positions, :mod:`lococo.cache`); nothing else depends on it.
    """

    keys: torch.Tensor
    values: torch.Tensor
    scores: torch.Tensor | None
    sources: torch.Tensor


class Policy:
    """Base class of the cache policies.

    Class attributes:
        name: registry name (``--policy NAME``).
        score_mode: which importance scores the policy needs from the attention of the latest forward:
            None (no scores), "last" (column sums of the latest forward), "accumulated" (sums over all
            forwards, H2O), "recent" (sums over the forwards since the latest compression: "last" in a
            segmented prefill, every query since the previous compression in decoding), or "window" (column
            sums of the last ``score_window`` queries, SnapKV/TOVA).
        compresses: False only for the full cache.
        uses_mem_size: False for policies that keep everything (``full``): they take no ``mem_size``.
        needs_model: True if the policy can only be built for a model (``lococo``: its heads).
        learned: True for policies with trained parameters (reports compare them with the best of the rest).
        contiguous: True if the kept slots are always the most recent tokens, in order (``window``): the one
            kind of compression a model whose ALiBi biases count back from the newest key slot (MPT) follows
            exactly (:mod:`lococo.models_support`).
        stateless: False if compressions draw on state shared by every cache of the policy (``random``'s
            generator): a cache forked after some compressions then differs from one read from scratch.
        position_scheme: the key positions of the policy's caches when none is asked for (``make_cache``'s
            ``positions=None``), on models that allow moving keys (:mod:`lococo.positions`). "reindexed" for the
            heuristics: kept tokens at absolute distances past the model's context cost StreamingLLM and SnapKV
            2.0 and 1.3 nats per token at 32K on the reference model (reports/positions/positions.md); TOVA
            reads best "clamped" (reports/positions/clamped.md).

    Build a policy for a model with :meth:`for_model` (``make_cache`` / ``make_policy`` do): the one step
    that binds its settings to the model (LoCoCo: its heads; StreamingLLM with re-indexing: the RoPE).
    """

    name: ClassVar[str] = "base"
    score_mode: ClassVar[str | None] = None
    compresses: ClassVar[bool] = True
    uses_mem_size: ClassVar[bool] = True
    needs_model: ClassVar[bool] = False
    learned: ClassVar[bool] = False
    contiguous: ClassVar[bool] = False
    stateless: ClassVar[bool] = True
    position_scheme: ClassVar[str] = "reindexed"
    score_window: int | None = None

    @classmethod
    def for_model(cls, model, **settings) -> Policy:
        """The policy with ``settings`` for ``model`` (most policies do not need the model)."""
        return cls.build(**settings)

    @classmethod
    def build(cls, **settings) -> Policy:
        """``cls(**settings)``, with a clear error naming the settings the policy takes."""
        import inspect

        accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        unknown = sorted(set(settings) - set(accepted))
        if unknown:
            raise ConfigError(f"policy {cls.name!r} takes {', '.join(accepted)}; not {', '.join(unknown)}")
        return cls(**settings)

    def __init__(self, mem_size: int = 128, buffer: int = 16) -> None:
        if mem_size < 1:
            raise ConfigError(f"mem_size must be >= 1, got {mem_size}")
        if buffer < 0:
            raise ConfigError(f"buffer must be >= 0, got {buffer}")
        self.mem_size = int(mem_size)
        self.buffer = int(buffer)

    def default_positions(self) -> str:
        """The key-position scheme of this policy's caches when none is asked for (:mod:`lococo.positions`):
        ``position_scheme``."""
        return self.position_scheme

    def for_layer(self, layer_idx: int) -> Policy:
        """The policy instance used by one layer (stateless policies share themselves). Layers may keep
        different numbers of slots (per-layer budgets, as PyramidKV): return a policy with that layer's
        ``mem_size``; masks and padding follow each layer's own length."""
        return self

    def compress(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        scores: torch.Tensor | None,
        valid: torch.Tensor | None,
    ) -> Folded:
        """Return exactly ``mem_size`` slots: keys, values, scores carried for accumulated modes, and the
        stored slot each one stands for (:class:`Folded`)."""
        raise NotImplementedError

    def compress_after_one_query(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        scores: torch.Tensor | None,
        valid: torch.Tensor | None,
    ) -> Folded:
        """The fold when the scores come from a forward of one query (decoding, every ``buffer + 1`` tokens).
        The same as :meth:`compress` unless a policy folds differently there (LoCoCo's "hybrid" scores,
        ``LoCoCoConfig.mix_in_decoding``)."""
        return self.compress(keys, values, scores, valid)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mem_size={self.mem_size}, buffer={self.buffer})"


# --------------------------------------------------------------------------------------------------
# Helpers shared by the policies (vectorised over batch and heads).


def masked(scores: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Scores with padding slots set to -inf so they are never selected."""
    scores = scores.float()
    if valid is None:
        return scores
    return scores.masked_fill(~valid[:, None, :], NEG_INF)


def summed_over_layer(scores: torch.Tensor) -> torch.Tensor:
    """``[b, h, L]`` scores summed over the layer's KV heads, the same for each (TOVA's ranking: every head of a
    layer keeps the same tokens)."""
    return scores.float().sum(dim=1, keepdim=True).expand(scores.shape)


def topk_in_order(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest scores along the last axis, in increasing position order."""
    k = min(k, scores.shape[-1])
    idx = scores.topk(k, dim=-1, sorted=False).indices
    return idx.sort(dim=-1).values


def gather_slots(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gather slots ``idx [b, h, n]`` from ``x [b, h, L, d]`` (or ``[b, h, L]``)."""
    if x.dim() == 3:
        return x.gather(-1, idx)
    return x.gather(2, idx.unsqueeze(-1).expand(*idx.shape, x.shape[-1]))


def complement_in_order(keep: torch.Tensor, n_rest: int) -> torch.Tensor:
    """Positions where ``keep [b, h, L]`` is False, in order (exactly ``n_rest`` of them per row)."""
    order = keep.to(torch.int8).argsort(dim=-1, stable=True)
    return order[..., :n_rest]


def index_mask(idx: torch.Tensor, length: int) -> torch.Tensor:
    """Boolean mask ``[..., length]`` that is True at the positions in ``idx``."""
    mask = torch.zeros(*idx.shape[:-1], length, dtype=torch.bool, device=idx.device)
    return mask.scatter_(-1, idx, True)


def positions_like(scores: torch.Tensor) -> torch.Tensor:
    """Positions 0..L-1 broadcast to the shape of ``scores [b, h, L]``, as float."""
    length = scores.shape[-1]
    return torch.arange(length, device=scores.device, dtype=torch.float32).expand(scores.shape)


def recency_scores(like: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Scores that rank newer slots higher (padding at -inf): top-k of these is a recent window."""
    return masked(positions_like(like), valid)


def select(
    keys: torch.Tensor,
    values: torch.Tensor,
    scores: torch.Tensor | None,
    idx: torch.Tensor,
) -> Folded:
    """Keep the slots ``idx [b, h, M]`` of keys, values and scores."""
    kept_scores = None if scores is None else gather_slots(scores, idx)
    return Folded(gather_slots(keys, idx), gather_slots(values, idx), kept_scores, idx)
