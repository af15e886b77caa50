"""Which models LoCoCo supports, and where their attention layers live.

Supported: decoder-only models whose attention modules call the standard ``past_key_values.update``
and dispatch through transformers' ``AttentionInterface`` (Llama, Mistral, Qwen2, Qwen3 are tested).
Sliding-window layers keep their own window cache; only global (full-attention) layers are compressed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import IncompatibleModelError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass(frozen=True)
class AttentionLayout:
    """The facts about a model that the heads and the cache need."""

    model_type: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    layer_types: tuple[str, ...]
    attention_modules: tuple[nn.Module, ...]
    devices: tuple[torch.device, ...]

    @property
    def compressed_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == "full_attention"]

    def fingerprint(self) -> dict:
        """What must match for trained heads to fit a model."""
        return {
            "model_type": self.model_type,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "layer_types": list(self.layer_types),
        }


def _decoder_layers(model: nn.Module) -> nn.ModuleList:
    base = getattr(model, "model", model)
    layers = getattr(base, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise IncompatibleModelError(
            f"cannot find the decoder layers of {type(model).__name__}; LoCoCo supports causal LMs of type "
            f"{', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    return layers


def attention_layout(model: nn.Module) -> AttentionLayout:
    """Describe ``model``'s attention layers, or raise :class:`IncompatibleModelError` naming what is supported."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise IncompatibleModelError(
            f"LoCoCo does not support model type {model_type!r} ({type(model).__name__}); supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (decoder-only models whose attention calls the standard cache update)"
        )
    layers = _decoder_layers(model)
    num_heads = config.num_attention_heads
    num_kv_heads = getattr(config, "num_key_value_heads", None) or num_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // num_heads
    layer_types = getattr(config, "layer_types", None)
    if layer_types is None:
        sliding = getattr(config, "sliding_window", None)
        if sliding is not None:
            raise IncompatibleModelError(
                f"this {model_type} model uses sliding-window attention (sliding_window={sliding}) in every layer, "
                "so there is no global layer for LoCoCo to compress; load it with sliding_window=None "
                "(e.g. from_pretrained(..., sliding_window=None)) to use full attention"
            )
        layer_types = ["full_attention"] * len(layers)
    if "full_attention" not in layer_types:
        raise IncompatibleModelError("this model has no full-attention layer for LoCoCo to compress")
    modules = []
    devices = []
    for i, layer in enumerate(layers):
        attn = getattr(layer, "self_attn", None)
        if attn is None or getattr(attn, "layer_idx", None) != i:
            raise IncompatibleModelError(f"layer {i} of {type(model).__name__} has no standard self_attn module")
        modules.append(attn)
        devices.append(next(attn.parameters()).device)
    return AttentionLayout(
        model_type=model_type,
        num_layers=len(layers),
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        layer_types=tuple(layer_types),
        attention_modules=tuple(modules),
        devices=tuple(devices),
    )
