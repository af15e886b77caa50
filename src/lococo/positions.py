"""Positions inside the cache (StreamingLLM's re-indexing), for every policy on a rotary model.

By default positions stay absolute: a query at token t sees a kept key of token s at distance t - s, as
with the full cache. Past the length a model was trained on, those distances are ones it never saw. With
``make_cache(model, policy, reindex_positions=True)`` every compression moves the kept slots next to the
incoming tokens instead: the n slots a row keeps, in the order of the positions they carry, take the n
positions right before the next token's. The queries keep their absolute positions; since RoPE attention
depends only on query-key distances, the kept keys are re-rotated by the model's own rotary embedding
(and its own ``apply_rotary_pos_emb``, so interleaved conventions follow the family). A merged slot takes
the position of the token it stands for (:class:`lococo.policies.base.Folded` ``sources``): a LoCoCo
fused slot its selected top-C token's, a mean-pooled group its middle token's; the tokens mixed into it
move with it, keeping their offsets to that token.

``positions="clamped"`` (``make_cache``) sits between the two: positions stay absolute while every kept slot
is within the model's context length of the incoming tokens (:func:`clamp_distance`), so up to that length
it reads exactly as absolute; a slot that falls farther back moves to just below that distance (the slots
that do keep their order). Past the model's length no query-key distance exceeds what it was trained on,
and what is near keeps the distances absolute positions give it, as the heads trained with absolute
positions saw them.

The cache tracks each slot's position (``[batch, kv_heads, slots]``, on the device, no host copies); this
module holds the arithmetic: where the next token goes, the positions of incoming tokens, and the moves.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as _llama_apply

from .errors import ConfigError, IncompatibleModelError
from .models_support import _decoder, _text_config, find_attention, find_decoder_layers, reindex_refusal

POSITION_SCHEMES = ("absolute", "reindexed", "clamped")
RESERVED_SEGMENT = 512  # tokens of the incoming segment kept free below the model's length by "clamped"


def resolve_positions(model: nn.Module, policy, requested: str | bool | None) -> str:
    """The key-position scheme of a cache of ``policy`` on ``model``: ``requested`` (a scheme of
    ``POSITION_SCHEMES``, or a bool: re-indexed or absolute) if given, else the policy's default
    (``Policy.default_positions``) where the model allows moving keys, absolute elsewhere. A policy that keeps
    everything always uses absolute positions."""
    if not getattr(policy, "compresses", True):
        return "absolute"
    if isinstance(requested, bool):
        return "reindexed" if requested else "absolute"
    if requested is None:
        scheme = policy.default_positions() if hasattr(policy, "default_positions") else "absolute"
        if scheme == "absolute" or reindex_refusal(model) is not None:
            return "absolute"
        if scheme == "clamped":  # a default never fails: without a usable context length, absolute
            try:
                clamp_distance(model, policy)
            except (ConfigError, IncompatibleModelError):
                return "absolute"
        return scheme
    if requested not in POSITION_SCHEMES:
        raise ConfigError(f"positions must be one of {', '.join(POSITION_SCHEMES)}, got {requested!r}")
    return requested


def clamp_distance(model: nn.Module, policy) -> int:
    """How far before the next token a slot may sit under the "clamped" scheme: the model's context length
    (``max_position_embeddings``, after any extension) less the slots the cache stores and one segment, so
    that no query of a segment of up to ``RESERVED_SEGMENT`` tokens sees a key farther than the model was
    trained on."""
    length = getattr(_text_config(model), "max_position_embeddings", None)
    if not length:
        raise IncompatibleModelError("positions='clamped' needs the model's context length "
                                     "(config.max_position_embeddings); use 'reindexed' or 'absolute'")
    distance = int(length) - policy.mem_size - policy.buffer - RESERVED_SEGMENT
    if distance < 1:
        raise ConfigError(f"positions='clamped': mem_size + buffer + {RESERVED_SEGMENT} must be below the model's "
                          f"context length {length}; use 'reindexed'")
    return distance


class KeyRotation:
    """Moves RoPE-rotated keys by a number of positions, with the model's own rotary embedding."""

    def __init__(self, model: nn.Module, layer_type: str = "full_attention") -> None:
        reason = reindex_refusal(model)
        if reason is not None:
            raise IncompatibleModelError(f"{type(model).__name__}: {reason}")
        rotary = _decoder(model).rotary_emb
        self.rotary = rotary
        params = inspect.signature(rotary.forward).parameters
        self.kwargs = {"layer_type": layer_type} if "layer_type" in params else {}
        scaling = getattr(rotary, f"{layer_type}_attention_scaling", getattr(rotary, "attention_scaling", 1.0))
        self.scaling = float(scaling or 1.0)
        layers = find_decoder_layers(model, _text_config(model).num_hidden_layers)
        found = find_attention(layers[0], 0)
        apply = getattr(type(found[1]).forward, "__globals__", {}).get("apply_rotary_pos_emb") if found else None
        self.apply = apply or _llama_apply

    def __call__(self, keys: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """``keys [b, h, n, d]`` rotated forward by ``shift [b, h, n]`` positions (rotations compose)."""
        b, h, n, d = keys.shape
        flat = keys.reshape(b * h, 1, n, d)
        cos, sin = self.rotary(flat, shift.reshape(b * h, n), **self.kwargs)
        if self.scaling != 1.0:  # the keys already carry the rotary's attention scaling once
            cos, sin = cos / self.scaling, sin / self.scaling
        rotated = self.apply(flat, flat, cos.to(flat.device), sin.to(flat.device))[1]
        return rotated.reshape(b, h, n, d).to(keys.dtype)


def incoming_positions(anchor: torch.Tensor, heads: int, q: int, valid: torch.Tensor | None) -> torch.Tensor:
    """Positions ``[b, heads, q]`` of ``q`` incoming tokens that follow a row whose next position is ``anchor``;
    with padding (``valid [b, q]``) the real tokens are counted, as the model's position ids count them."""
    if valid is None:
        steps = torch.arange(q, device=anchor.device).expand(anchor.shape[0], q)
    else:
        steps = valid.long().cumsum(-1) - 1
    return (anchor + steps)[:, None, :].expand(-1, heads, -1).contiguous()


def reindexed(keys: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor | None, anchor: torch.Tensor,
              rotate: KeyRotation) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the slots of each row to the positions right before ``anchor [b, 1]``, in the order of the
    positions they carry (padding slots, ranked first, drop out of the count). Returns (keys, positions)."""
    n = positions.shape[-1]
    order_key = positions if valid is None else positions.masked_fill(~valid[:, None, :], -1)
    rank = order_key.argsort(dim=-1, stable=True).argsort(dim=-1)
    target = anchor[:, :, None] - n + rank
    return rotate(keys, target - positions), target


def clamped(keys: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor | None, anchor: torch.Tensor,
            rotate: KeyRotation, max_distance: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the slots of each row that sit more than ``max_distance`` before ``anchor [b, 1]`` to the positions
    right below that boundary, in the order of the positions they carry; nearer slots keep theirs (a shift of
    0 leaves a key exactly as it is). Returns (keys, positions)."""
    boundary = anchor[:, :, None] - max_distance
    far = positions < boundary
    if valid is not None:
        far = far & valid[:, None, :]
    n_far = far.sum(-1, keepdim=True)
    order_key = torch.where(far, positions, torch.iinfo(positions.dtype).max)
    rank = order_key.argsort(dim=-1, stable=True).argsort(dim=-1)
    target = torch.where(far, boundary - n_far + rank, positions)
    return rotate(keys, target - positions), target
