"""A fixed-size KV cache built on transformers' v5 ``Cache`` / ``CacheLayerMixin``.

`CompressedLayer` stores only the model's KV heads (GQA-native). It reports *tokens seen* from
``get_seq_length`` (so queries keep absolute positions; with ``reindex_positions`` the kept keys are moved
next to them instead, :mod:`lococo.positions`) and, before appending new tokens, lazily folds its
stored slots back to ``mem_size`` whenever it holds more than ``mem_size + buffer`` (docs/method.md). *How*
slots are folded is the job of a :class:`~lococo.policies.Policy` (LoCoCo's heads, or a baseline).

Padding: a left-padded row keeps invalid slots at the front. Each row follows its own trigger
(``valid tokens > mem_size + buffer``) and invalid slots are dropped whenever the layer is compacted, so a
padded row ends up with what it would hold alone. Importance scores arrive from the attention wrapper
(:mod:`lococo.attention`) through :meth:`CompressedLayer.record_scores`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer, DynamicSlidingWindowLayer

from .errors import ConfigError
from .models_support import layout_for_policy
from .policies.base import Policy
from .positions import (
    KeyRotation,
    clamp_distance,
    clamped,
    incoming_positions,
    reindexed,
    resolve_positions,
)

_SUMMED = ("accumulated", "recent")
"""Score modes summed over forwards (scores are asked of every forward, not only before a compression)."""
SCORE_KERNELS = ("blockwise", "flex")
"""How attention scores are computed: blocks of probabilities (:mod:`lococo.attention`, the default) or two
``flex_attention`` passes that never hold them (:mod:`lococo.flex_scores`, the GPU path)."""


class CompressedLayer(CacheLayerMixin):
    """One attention layer's fixed-size memory."""

    is_sliding = False
    is_compileable = False
    observes = False  # True: the attention wrapper hands each forward's queries and output to ``observe``

    def __init__(self, policy: Policy, rotation: KeyRotation | None = None, max_distance: int | None = None) -> None:
        super().__init__()
        self.policy = policy
        self.rotation = rotation  # set: positions re-indexed inside the cache at every compression
        self.max_distance = max_distance  # set (with rotation): only slots farther than this move ("clamped")
        self.positions: torch.Tensor | None = None  # [b, kv_heads, stored] long, tracked with ``rotation``
        # [b, 1] long: the position of each row's next token (its newest token may have been evicted)
        self.next_positions: torch.Tensor | None = None
        self.mem_size = policy.mem_size
        self.buffer = policy.buffer
        self.seen = 0
        self.valid: torch.Tensor | None = None  # [b, stored] or None (all slots real tokens)
        self.row_valid: list[int] | None = None  # valid slots per row, on the host (None with valid)
        self.scores: torch.Tensor | None = None  # [b, kv_heads, stored] importance scores (or None)
        self.score_queries: int | None = None  # queries of the forward behind ``scores`` (None: several forwards)
        # validity of the tokens of the next update and its per-row counts on the host; None: all real
        self.incoming_valid: tuple[torch.Tensor, list[int]] | None = None
        self.causal_queries = False  # the latest forward's mask is causal (attention._is_causal): skip later keys
        self.compressions = 0
        self.score_kernel = "blockwise"  # or "flex" (lococo.flex_scores): set by CompressedCache

    # -- CacheLayerMixin contract ------------------------------------------------------------------
    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        b, h, _, d = key_states.shape
        self.keys = key_states.new_zeros(b, h, 0, d)
        self.values = value_states.new_zeros(b, h, 0, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.policy.compresses and self.stored > self.mem_size + self.buffer:
            self._compact()
            if self.policy.score_mode == "recent":
                self.scores = None  # scores count again from the queries after this compression
        q = key_states.shape[-2]
        incoming, self.incoming_valid = self.incoming_valid, None
        if self.rotation is not None:
            self._track_positions(q, None if incoming is None else incoming[0].to(key_states.device))
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        if incoming is not None or self.valid is not None:
            old = self.valid if self.valid is not None else self._ones(self.stored - q)
            new = incoming[0].to(old.device) if incoming is not None else self._ones(q)
            self.valid = torch.cat([old, new], dim=-1)
            old_n = self.row_valid if self.row_valid is not None else [self.stored - q] * old.shape[0]
            new_n = incoming[1] if incoming is not None else [q] * old.shape[0]
            self.row_valid = [a + c for a, c in zip(old_n, new_n, strict=True)]
        if self.scores is not None and self.policy.score_mode in _SUMMED:
            self.scores = torch.cat([self.scores, self.scores.new_zeros(*self.scores.shape[:2], q)], dim=-1)
        else:
            self.scores = self.score_queries = None
        self.seen += q
        return self.keys, self.values

    def get_seq_length(self) -> int:
        """Tokens seen (not slots stored): positions and masks stay absolute."""
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        stored = self._stored_after_compaction()
        return stored + query_length, self.seen - stored

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.keys = self.values = None
        self.is_initialized = False
        self.seen = 0
        self.valid = self.scores = self.incoming_valid = self.row_valid = self.positions = self.score_queries = None
        self.next_positions = None

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        for name in ("valid", "scores", "positions", "next_positions"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.index_select(0, beam_idx.to(t.device)))
        if self.row_valid is not None:
            self.row_valid = [self.row_valid[i] for i in beam_idx.tolist()]

    def batch_repeat_interleave(self, repeats: int) -> None:
        for name in ("keys", "values", "valid", "scores", "positions", "next_positions"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.repeat_interleave(repeats, dim=0))
        if self.row_valid is not None:
            self.row_valid = [n for n in self.row_valid for _ in range(repeats)]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        for name in ("keys", "values", "valid", "scores", "positions", "next_positions"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t[indices, ...])
        if self.row_valid is not None:
            self.row_valid = [self.row_valid[i] for i in torch.as_tensor(indices).reshape(-1).tolist()]

    # -- what the attention wrapper asks ------------------------------------------------------------
    @property
    def stored(self) -> int:
        return 0 if self.keys is None else self.keys.shape[-2]

    def score_request(self) -> int | None:
        """How many of the latest queries the scores of this forward must cover (0 = all), or None.

        Called after ``update``: in "last" mode scores are computed only when the next update compresses.
        """
        mode = self.policy.score_mode
        if mode is None or not self.policy.compresses:
            return None
        if mode not in _SUMMED and self.stored <= self.mem_size + self.buffer:
            return None
        return self.policy.score_window or 0

    def record_scores(self, scores: torch.Tensor, queries: int | None = None) -> None:
        """Store column-summed attention ``[b, kv_heads, stored]`` of the latest forward (of ``queries`` queries:
        scores of one query, summed over no other forward, are folded by ``Policy.compress_after_one_query``)."""
        scores = scores.detach().float()
        summed = self.policy.score_mode in _SUMMED
        if summed and self.scores is not None:
            scores = self.scores + scores
        self.scores = scores
        self.score_queries = None if summed else queries

    def detach_(self) -> None:
        """Cut the autograd graph through the stored memory (truncated back-propagation)."""
        if self.is_initialized:
            self.keys = self.keys.detach()
            self.values = self.values.detach()

    # -- positions (reindex_positions) -------------------------------------------------------------
    def _track_positions(self, q: int, incoming_valid: torch.Tensor | None) -> None:
        """Append the positions of ``q`` incoming tokens (called before they are stored)."""
        if self.positions is None:
            self.positions = torch.zeros(*self.keys.shape[:2], 0, dtype=torch.long, device=self.keys.device)
            self.next_positions = torch.zeros(self.keys.shape[0], 1, dtype=torch.long, device=self.keys.device)
        anchor = self.next_positions
        new = incoming_positions(anchor, self.keys.shape[1], q, incoming_valid)
        self.positions = torch.cat([self.positions, new], dim=-1)
        self.next_positions = anchor + (q if incoming_valid is None else incoming_valid.sum(-1, keepdim=True))

    # -- compaction --------------------------------------------------------------------------------
    def _ones(self, n: int) -> torch.Tensor:
        return torch.ones(self.keys.shape[0], n, dtype=torch.bool, device=self.keys.device)

    def _plan(self) -> tuple[int, list[bool] | None, list[int] | None]:
        """(stored length after compaction, rows that compress, valid slots kept per row), from host counts:
        planning never waits for the device."""
        if self.valid is None:
            return self.mem_size, None, None
        limit = self.mem_size + self.buffer
        rows = [n > limit for n in self.row_valid]
        kept = [self.mem_size if r else n for r, n in zip(rows, self.row_valid, strict=True)]
        return max(kept), rows, kept

    def _stored_after_compaction(self) -> int:
        if not self.is_initialized:
            return 0
        if not self.policy.compresses or self.stored <= self.mem_size + self.buffer:
            return self.stored
        return self._plan()[0]

    def _compressed(self):
        """The policy's fold of the stored slots: (keys, values, scores, positions or None)."""
        scores = self.scores
        if scores is None:
            scores = torch.zeros(self.keys.shape[:3], device=self.keys.device) if self.policy.score_mode else None
        fold = self.policy.compress_after_one_query if self.score_queries == 1 else self.policy.compress
        folded = fold(self.keys, self.values, scores, self.valid)
        positions = None if self.positions is None else self.positions.gather(-1, folded.sources)
        return folded.keys, folded.values, folded.scores, positions

    def _compact(self) -> None:
        with torch.profiler.record_function("lococo.compact"):
            anchor = self.next_positions if self.rotation is not None else None
            self._compact_now()
            if anchor is None:
                return
            if self.max_distance is None:
                self.keys, self.positions = reindexed(self.keys, self.positions, self.valid, anchor, self.rotation)
            elif self.seen > self.max_distance:  # before that no slot can be farther back (host count, no sync)
                self.keys, self.positions = clamped(self.keys, self.positions, self.valid, anchor, self.rotation,
                                                    self.max_distance)

    def _compact_now(self) -> None:
        self.compressions += 1
        new_len, rows_host, kept = self._plan()
        if rows_host is None:  # no padding anywhere: every row compresses
            self.keys, self.values, self.scores, self.positions = self._compressed()
            return
        # Per row: compress (M slots) or keep its valid slots; right-align; drop invalid slots.
        sources_k, sources_v, sources_s, sources_p = [self.keys], [self.values], [self.scores], [self.positions]
        rows = torch.tensor(rows_host, dtype=torch.bool).to(self.valid.device, non_blocking=True)
        keep = self.valid & ~rows[:, None]
        if any(rows_host):
            ck, cv, cs, cp = self._compressed()
            sources_k.append(ck)
            sources_v.append(cv)
            sources_s.append(cs)
            sources_p.append(cp)
            keep = torch.cat([keep, rows[:, None].expand(-1, ck.shape[-2])], dim=-1)
        k_all, v_all = torch.cat(sources_k, dim=2), torch.cat(sources_v, dim=2)
        order = keep.to(torch.int8).argsort(dim=-1, stable=True)[:, -new_len:]  # kept slots last, in order
        h, d = k_all.shape[1], k_all.shape[-1]
        gather = order[:, None, :, None].expand(-1, h, -1, d)
        self.keys = k_all.gather(2, gather)
        self.values = v_all.gather(2, order[:, None, :, None].expand(-1, h, -1, v_all.shape[-1]))
        self.valid = keep.gather(1, order)
        if any(s is None for s in sources_s):
            self.scores = None
        else:
            self.scores = torch.cat(sources_s, dim=-1).gather(2, order[:, None, :].expand(-1, h, -1))
        if self.positions is not None:
            self.positions = torch.cat(sources_p, dim=-1).gather(2, order[:, None, :].expand(-1, h, -1))
        self.row_valid = kept
        if all(n == new_len for n in kept):
            self.valid = self.row_valid = None


def _transformers_layer(kind: str, kwargs: dict, window: int | None):
    """The layer transformers' ``DynamicCache(config=...)`` builds for a layer of ``kind``."""
    try:
        from transformers.cache_utils import DYNAMIC_LAYER_TYPE_MAPPING
    except ImportError:  # older transformers 5.x: sliding-window and chunked layers, or plain layers
        return DynamicSlidingWindowLayer(sliding_window=window) if window else DynamicLayer()
    return DYNAMIC_LAYER_TYPE_MAPPING[kind](**kwargs)


class CompressedCache(Cache):
    """A cache whose global attention layers hold at most ``mem_size + buffer`` slots between forwards.

    Build it with :func:`lococo.make_cache` (which also enables score collection on the model), or
    directly from a policy. ``reindex_positions=True`` moves the kept slots next to the incoming tokens at
    every compression (StreamingLLM's positions inside the cache, for any policy; :mod:`lococo.positions`).
    A model the policy cannot run on is refused with the reason
    (:func:`lococo.models_support.layout_for_policy`). Every layer that is not a full-attention layer keeps the
    layer transformers' ``DynamicCache(config=...)`` would give it: sliding-window and chunked layers their
    window, the recurrent / convolution layers of hybrid models their state. ``score_kernel`` (``SCORE_KERNELS``)
    picks how attention scores are computed.
    """

    def __init__(self, model: nn.Module, policy: Policy, reindex_positions: bool = False,
                 positions: str | None = None, score_kernel: str = "blockwise") -> None:
        if score_kernel not in SCORE_KERNELS:
            raise ConfigError(f"score_kernel must be one of {SCORE_KERNELS}, got {score_kernel!r}")
        scheme = resolve_positions(model, policy, positions if positions is not None else bool(reindex_positions))
        layout = layout_for_policy(model, policy, reindex_positions=scheme != "absolute")
        rotation = KeyRotation(model) if scheme != "absolute" else None
        layers = []
        for i, kind in enumerate(layout.layer_types):
            if kind == "full_attention":
                layer_policy = policy.for_layer(i)
                distance = clamp_distance(model, layer_policy) if scheme == "clamped" else None
                layer = CompressedLayer(layer_policy, rotation, distance)
                layer.score_kernel = score_kernel
                layers.append(layer)
            else:
                kwargs = layout.layer_kwargs[i] if layout.layer_kwargs else {}
                layers.append(_transformers_layer(kind, kwargs, layout.windows[i] if layout.windows else None))
        super().__init__(layers=layers)
        self.policy = policy
        self.position_scheme = scheme  # "absolute", "reindexed" or "clamped" (lococo.positions)
        self.reindex_positions = scheme == "reindexed"
        self.incoming_memo = None  # (mask, q_len, validity, causal) of the latest forward: see attention._incoming

    @property
    def compressed_layers(self) -> list[CompressedLayer]:
        return [layer for layer in self.layers if isinstance(layer, CompressedLayer)]

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        """The mask of the compressed layers spans the longest of them (layers may keep different numbers of
        slots, :class:`~lococo.policies.base.Policy` ``for_layer``); each layer reads its own last columns,
        every stored slot being visible (bottom-right aligned causality)."""
        layer = self.layers[layer_idx] if layer_idx < len(self.layers) else None
        if not isinstance(layer, CompressedLayer):
            return super().get_mask_sizes(query_length, layer_idx)
        stored = max(other._stored_after_compaction() for other in self.compressed_layers)
        return stored + query_length, layer.seen - stored

    def stored_length(self) -> int:
        """Slots stored by the compressed layers (the most any of them holds)."""
        return max((layer.stored for layer in self.compressed_layers), default=0)

    def cache_bytes(self) -> int:
        """Bytes held by the keys and values of every layer, and by the recurrent / convolution states of a
        hybrid model's other layers (measured from the tensors)."""
        total = 0
        for layer in self.layers:
            tensors = [getattr(layer, "keys", None), getattr(layer, "values", None)]
            for name in ("conv_states", "recurrent_states"):
                tensors += list((getattr(layer, name, None) or {}).values())
            total += sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
        return total

    def detach_(self) -> None:
        """Cut gradients through the stored memory of every layer (truncated BPTT boundary)."""
        for layer in self.compressed_layers:
            layer.detach_()

    def fork(self) -> CompressedCache:
        """An independent copy of the stored state that shares the policies (and so the heads): read two
        continuations from the same prefix."""
        import copy

        shared = {id(self.policy): self.policy}
        shared.update({id(layer.policy): layer.policy for layer in self.compressed_layers})
        shared.update({id(layer.rotation): layer.rotation for layer in self.compressed_layers})
        shared[id(self.incoming_memo)] = None
        return copy.deepcopy(self, shared)

