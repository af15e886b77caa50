"""LoCoCo: exact heavy hitters plus convolution-fused slots (docs/method.md, "One compression")."""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..heads import ConvCompressorHead, LoCoCoHeads
from . import register_policy
from .base import (
    NEG_INF,
    Policy,
    complement_in_order,
    gather_slots,
    index_mask,
    masked,
    topk_in_order,
)


def lococo_compress(
    head: ConvCompressorHead,
    n_heavy: int,
    local_window: int,
    keys: torch.Tensor,
    values: torch.Tensor,
    scores: torch.Tensor,
    valid: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fold ``L`` stored slots into ``n_heavy + head.n_fused`` slots, vectorised over batch and KV heads.

    1. heavy hitters H: the last ``local_window`` slots plus the top (H - local) by score, in order;
    2. the rest R goes through the conv: ``A = softmax_R(act(conv([K_R; V_R])))``;
    3. ``W = (1 - lambda) P + lambda A`` with P the one-hot top-C of R by score (in order);
    4. memory = ``[K_H ; W K_R]`` (same W for values); carried scores ``[s_H ; W s_R]``.
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
        return k_h, v_h, s_h
    k_r, v_r = gather_slots(keys, idx_r), gather_slots(values, idx_r)
    s_r = gather_slots(s, idx_r)
    valid_r = None if valid is None else gather_slots(valid[:, None, :].expand(b, h, length), idx_r)

    with torch.profiler.record_function("lococo.conv"):
        logits = head.mixing_logits(k_r, v_r, valid_r).float()  # [b, h, C, R]
    if valid_r is not None:
        logits = logits.masked_fill(~valid_r[:, :, None, :], NEG_INF)
        logits = logits.masked_fill(~valid_r.any(-1)[:, :, None, None], 0.0)  # rows not compressed: no NaN
    mix = logits.softmax(dim=-1)
    top = topk_in_order(s_r, n_fused)  # [b, h, C] positions within R
    onehot = torch.zeros_like(mix).scatter_(-1, top.unsqueeze(-1), 1.0)
    lam = head.blend_weight().float()
    weight = (1.0 - lam) * onehot + lam * mix  # [b, h, C, R]
    k_f = (weight @ k_r.float()).to(keys.dtype)
    v_f = (weight @ v_r.float()).to(values.dtype)
    s_f = (weight @ gather_slots(scores.float(), idx_r).unsqueeze(-1)).squeeze(-1)
    return torch.cat([k_h, k_f], dim=2), torch.cat([v_h, v_f], dim=2), torch.cat([s_h, s_f], dim=-1)


@register_policy
class LoCoCoPolicy(Policy):
    """The learned compressor: needs the heads attached to the model (``lococo.attach`` / ``load_heads``)."""

    name = "lococo"
    score_mode = "last"

    def __init__(self, heads: LoCoCoHeads, layer_idx: int | None = None) -> None:
        config = heads.config
        super().__init__(config.mem_size, config.buffer)
        self.heads = heads
        self.layer_idx = layer_idx
        self.n_heavy = config.n_heavy
        self.local_window = config.local_window
        self.score_mode = config.score_mode

    @classmethod
    def from_model(cls, model, **overrides) -> LoCoCoPolicy:
        """The policy of the heads attached to ``model`` (``mem_size``/``buffer`` come from their config)."""
        from ..heads import get_heads

        if overrides:
            raise ConfigError(
                "the lococo policy takes mem_size/buffer from its heads' config; attach heads built with the "
                f"settings you want instead of passing {sorted(overrides)}"
            )
        return cls(get_heads(model))

    def for_layer(self, layer_idx: int) -> LoCoCoPolicy:
        return LoCoCoPolicy(self.heads, layer_idx)

    def compress(self, keys, values, scores, valid):
        head = self.heads.head(self.layer_idx)
        return lococo_compress(head, self.n_heavy, self.local_window, keys, values, scores, valid)
