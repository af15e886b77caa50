"""LoCoCo: exact heavy hitters plus convolution-fused slots (docs/method.md, "One compression")."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import ConfigError
from ..policies import register_policy
from ..policies.base import (
    NEG_INF,
    Folded,
    Policy,
    complement_in_order,
    gather_slots,
    index_mask,
    masked,
    summed_over_layer,
    topk_in_order,
)
from .config import LoCoCoConfig
from .heads import ConvCompressorHead, LoCoCoHeads


def lococo_compress(
    head: ConvCompressorHead,
    n_heavy: int,
    local_window: int,
    keys: torch.Tensor,
    values: torch.Tensor,
    scores: torch.Tensor,
    valid: torch.Tensor | None,
    mix: bool = True,
) -> Folded:
    """Fold ``L`` stored slots into ``n_heavy + head.n_fused`` slots, vectorised over batch and KV heads.

    1. heavy hitters H: the last ``local_window`` slots plus the top (H - local) by score, in order;
    2. the rest R goes through the conv: ``A = softmax_R(act(conv([K_R; V_R])))``;
    3. ``W = (1 - lambda) P + lambda A`` with P the one-hot top-C of R by score (in order);
    4. memory = ``[K_H ; W K_R]`` (same W for values); carried scores ``[s_H ; W s_R]``.

    A fused slot stands for its top-C token (``Folded.sources``). ``mix=False`` keeps the top-C tokens of R
    exactly (lambda 0, no conv): selection only; a head whose lambda is exactly 0 gives the same slots without
    running its conv.
    """
    b, h, length, _ = keys.shape
    n_fused = head.n_fused
    s = masked(scores, valid)
    if local_window:
        s = s.clone()
        s[..., length - local_window :] = float("inf")
    idx_h = topk_in_order(s, n_heavy)
    n_rest = length - n_heavy
    idx_r = complement_in_order(index_mask(idx_h, length), n_rest)
    k_h, v_h, s_h = gather_slots(keys, idx_h), gather_slots(values, idx_h), gather_slots(scores.float(), idx_h)
    if n_fused == 0:
        return Folded(k_h, v_h, s_h, idx_h)
    s_r = gather_slots(s, idx_r)
    top = topk_in_order(s_r, n_fused)  # [b, h, C] positions within R
    if not mix or head.selects_only():
        idx = torch.cat([idx_h, idx_r.gather(-1, top)], dim=-1)
        return Folded(gather_slots(keys, idx), gather_slots(values, idx), gather_slots(scores.float(), idx), idx)
    k_r, v_r = gather_slots(keys, idx_r), gather_slots(values, idx_r)
    valid_r = None if valid is None else gather_slots(valid[:, None, :].expand(b, h, length), idx_r)

    with torch.profiler.record_function("lococo.conv"):
        logits = head.mixing_logits(k_r, v_r, valid_r).float()  # [b, h, C, R]
    if valid_r is not None:
        logits = logits.masked_fill(~valid_r[:, :, None, :], NEG_INF)
        logits = logits.masked_fill(~valid_r.any(-1)[:, :, None, None], 0.0)  # rows not compressed: no NaN
    mix = logits.softmax(dim=-1)
    onehot = torch.zeros_like(mix).scatter_(-1, top.unsqueeze(-1), 1.0)
    lam = head.blend_weight().float()
    weight = (1.0 - lam) * onehot + lam * mix  # [b, h, C, R]
    k_f = (weight @ k_r.float()).to(keys.dtype)
    v_f = (weight @ v_r.float()).to(values.dtype)
    s_f = (weight @ gather_slots(scores.float(), idx_r).unsqueeze(-1)).squeeze(-1)
    sources = torch.cat([idx_h, idx_r.gather(-1, top)], dim=-1)
    return Folded(torch.cat([k_h, k_f], dim=2), torch.cat([v_h, v_f], dim=2), torch.cat([s_h, s_f], dim=-1), sources)


@register_policy
class LoCoCoPolicy(Policy):
    """The learned compressor. Its settings (M, buffer, rho, ...) are those of its heads' config: the heads
    own them, so there is one place to read them from. Build it with :meth:`for_model`."""

    name = "lococo"
    score_mode = "last"  # per instance: the heads' config (LoCoCoConfig.score_mode)
    needs_model = True
    learned = True
    def __init__(self, heads: LoCoCoHeads, layer_idx: int | None = None) -> None:
        config = heads.config
        super().__init__(config.mem_size, config.buffer)
        self.heads = heads
        self.layer_idx = layer_idx
        self.n_heavy = config.n_heavy
        self.local_window = config.local_window
        self.layer_average = config.score_mode == "query"  # TOVA's rule: the latest query, all heads of the layer
        self.one_query_over_layer = config.score_mode == "hybrid"  # "last", and TOVA's ranking in decoding
        self.mix_in_decoding = config.mix_in_decoding
        self.score_mode = {"query": "window", "hybrid": "last"}.get(config.score_mode, config.score_mode)
        self.score_window = 1 if self.layer_average else None

    def default_positions(self) -> str:
        """Heads trained with re-indexed positions read that way; heads trained with absolute positions (the
        shipped ones) read with "clamped" positions, which are absolute within the model's context length and
        keep every query-key distance inside it past it. On the held-out text, M = 128, against absolute
        positions: 8K unchanged (-0.00001 nats, 11 sequences), 32K -0.020 [-0.022, -0.018] (4 sequences),
        128K perplexity 48.8 -> 34.6 (1 sequence; reports/positions/clamped.md)."""
        scheme = self.heads.config.positions
        return "clamped" if scheme == "absolute" else scheme

    @classmethod
    def for_model(
        cls,
        model,
        *,
        mem_size: int | None = None,
        heads: str | Path | Sequence[str | Path] | None = None,
        segment_size: int | None = None,
        seed: int | None = None,
    ) -> LoCoCoPolicy:
        """Bind LoCoCo to ``model``: attach or load its heads, and check them against ``mem_size``.

        ``heads``:
          None: the heads attached to ``model`` (a clear error if there are none);
          ``"fresh"``: untrained heads ``LoCoCoConfig(mem_size or 128, segment_size or 512)`` seeded with
          ``seed``, unless heads are attached;
          ``"auto"``: the attached heads, else the heads shipped with lococo for this model and M, else fresh;
          a folder, hub id or ``"shipped"``, or several (the one trained for ``mem_size`` is taken): load
          those, replacing attached heads.
        Heads whose M differs from an explicit ``mem_size`` are refused, never silently used.
        """
        from .heads import attach, get_heads, has_heads
        from .heads_io import find_heads, load_heads, shipped_heads

        want = mem_size or LoCoCoConfig.mem_size
        if heads not in (None, "auto", "fresh"):
            load_heads(model, find_heads(model, heads, mem_size), replace=True)
        elif heads is not None and not has_heads(model):
            folder = shipped_heads(model, want) if heads == "auto" else None
            if folder is not None:
                load_heads(model, folder)
            else:
                if seed is not None:
                    torch.manual_seed(seed)
                attach(model, LoCoCoConfig(mem_size=want, segment_size=segment_size or LoCoCoConfig.segment_size))
        attached = get_heads(model)
        if mem_size is not None and attached.config.mem_size != mem_size:
            raise ConfigError(
                f"mem_size {mem_size} does not match the M = {attached.config.mem_size} of the LoCoCo heads "
                f"{'in ' + str(heads) if heads not in (None, 'auto', 'fresh') else 'attached to the model'}: drop "
                f"mem_size (the heads own it) or use heads trained for M = {mem_size}"
            )
        return cls(attached)

    def for_layer(self, layer_idx: int) -> LoCoCoPolicy:
        return LoCoCoPolicy(self.heads, layer_idx)

    def compress(self, keys, values, scores, valid):
        head = self.heads.head(self.layer_idx)
        if self.layer_average:
            scores = summed_over_layer(scores)
        return lococo_compress(head, self.n_heavy, self.local_window, keys, values, scores, valid)

    def compress_after_one_query(self, keys, values, scores, valid):
        """Decoding: with "hybrid" scores the one query's scores are summed over the layer's heads (TOVA's
        ranking); with ``mix_in_decoding`` False the fused slots are chosen, not mixed."""
        head = self.heads.head(self.layer_idx)
        if self.layer_average or self.one_query_over_layer:
            scores = summed_over_layer(scores)
        return lococo_compress(head, self.n_heavy, self.local_window, keys, values, scores, valid,
                               mix=self.mix_in_decoding)
