"""Which models LoCoCo supports, and where their attention layers live: a capability check, not a list.

:func:`attention_layout` inspects what the compressing cache needs and either describes the model or raises
:class:`~lococo.errors.IncompatibleModelError` naming the exact reason and what would make it work:

- **decoder layers**: the ``nn.ModuleList`` of ``config.num_hidden_layers`` blocks under ``model.base_model``
  (``model.model.layers``, ``model.transformer.h``, ``model.gpt_neox.layers``, ...);
- **one attention module per layer** (``self_attn``, ``attn``, ``attention``, ``self_attention`` or any
  ``*Attention`` submodule) whose ``layer_idx`` is the layer's index, whose ``forward`` takes the cache
  (``past_key_values`` / ``layer_past``) and ``**kwargs``, and that dispatches through transformers'
  ``AttentionInterface`` (``ALL_ATTENTION_FUNCTIONS``), so LoCoCo's attention function sees queries and keys.
  That it calls ``cache.update(k, v, layer_idx)`` cannot be read statically: tests/test_model_matrix.py
  checks it for every family listed in the README;
- **heads**: query heads, KV heads and ``head_dim`` from the config or the module; keys and values must share
  ``head_dim`` (multi-head latent attention, whose values are narrower than its keys, is refused);
- **layer kinds**, as transformers' own ``DynamicCache(config=...)`` reads them (``config.layer_types``, or
  ``sliding_window`` / ``attention_chunk_size`` per layer): full-attention layers are compressed,
  sliding-window and chunked layers keep transformers' own window layer; recurrent / state-space / linear
  attention layers and KV-sharing layers are refused, and so is a model with no full-attention layer;
- **positions**: rotary (full or partial, NoPE layers included) and no positional encoding work at any
  length, since stored keys carry their rotation and positions stay absolute. Learned absolute positions
  (GPT-2's ``wpe``) work within the position table; past it a clear error is raised at the forward (see
  :mod:`lococo.attention`; re-indexing positions is issue #14). ALiBi is refused: its bias is built from the
  attention mask's key positions, which a compressed cache no longer stores one per token.

Trained heads are tied to one architecture by :meth:`AttentionLayout.fingerprint` (``model_type`` included).
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import IncompatibleModelError

ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
"""Where decoder layers usually keep their attention module (tried first; any ``*Attention`` submodule with
the layer's ``layer_idx`` is found too)."""

CACHE_ARGUMENTS = ("past_key_values", "layer_past", "past_key_value")
"""The names an attention module's ``forward`` gives the cache."""

WINDOW_KINDS = ("sliding_attention", "chunked_attention")
"""Layer kinds that keep transformers' own window layer (not compressed)."""


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
    windows: tuple[int | None, ...] = ()  # the window of each sliding / chunked layer (None: full attention)
    positions: str = "rotary"  # "rotary", "partial rotary", "learned absolute", "none"
    max_positions: int | None = None  # learned absolute positions: the size of the position table
    cache_arguments: tuple[str, ...] = field(default=())  # the cache argument of each attention forward

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


def _refuse(model: nn.Module, reason: str) -> IncompatibleModelError:
    config = getattr(model, "config", None)
    name = f"{type(model).__name__} (model_type {getattr(config, 'model_type', None)!r})"
    return IncompatibleModelError(f"lococo cannot compress the cache of {name}: {reason}")


def _text_config(model: nn.Module):
    config = getattr(model, "config", None)
    if config is None:
        raise IncompatibleModelError(f"{type(model).__name__} has no config: lococo needs a transformers model")
    getter = getattr(config, "get_text_config", None)
    return getter(decoder=True) if getter is not None else config


def _decoder(model: nn.Module) -> nn.Module:
    """The decoder stack: ``model.get_decoder()`` where transformers knows it, else ``model.base_model``."""
    getter = getattr(model, "get_decoder", None)
    if getter is not None:
        try:
            decoder = getter()
        except Exception:  # noqa: BLE001 - a few exotic models raise here; fall back to base_model
            decoder = None
        if isinstance(decoder, nn.Module):
            return decoder
    return getattr(model, "base_model", model)


def find_decoder_layers(model: nn.Module, num_layers: int) -> nn.ModuleList:
    """The first ``nn.ModuleList`` of ``num_layers`` blocks in the decoder (``model.get_decoder()``, else
    ``model.base_model``): ``model.model.layers``, ``model.transformer.h``, ``model.gpt_neox.layers``, ..."""
    base = _decoder(model)
    for _, module in base.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            return module
    raise _refuse(
        model,
        f"no nn.ModuleList of config.num_hidden_layers={num_layers} decoder layers under {type(base).__name__}; "
        "lococo needs the decoder blocks in one ModuleList, as transformers' decoder-only models keep them",
    )


def find_attention(layer: nn.Module, layer_idx: int) -> tuple[str, nn.Module] | None:
    """The attention module of decoder layer ``layer_idx``: a known name or any ``*Attention`` submodule whose
    ``layer_idx`` is the layer's index (never the layer itself, nor a cross-attention module)."""
    for name in ATTENTION_NAMES:
        child = getattr(layer, name, None)
        if isinstance(child, nn.Module) and getattr(child, "layer_idx", None) == layer_idx:
            return name, child
    for name, child in layer.named_modules():
        if child is layer or "cross" in name.lower() or getattr(child, "is_cross_attention", False):
            continue
        if "attention" in type(child).__name__.lower() and getattr(child, "layer_idx", None) == layer_idx:
            return name, child
    return None


def _layer_kinds(config, num_layers: int) -> tuple[list[str], list[int | None]]:
    """Each layer's kind and window, read as transformers' ``DynamicCache(config=...)`` reads them."""
    try:
        from transformers.cache_utils import get_layer_types_and_kwargs
    except ImportError:  # older transformers 5.x: config.layer_types or one sliding_window for every layer
        get_layer_types_and_kwargs = None
    if get_layer_types_and_kwargs is not None:
        kinds, kwargs = get_layer_types_and_kwargs(config)
        kinds = list(kinds)
        windows = [kw.get("sliding_window") if kind in WINDOW_KINDS else None for kind, kw in zip(kinds, kwargs, strict=True)]
    else:
        kinds = getattr(config, "layer_types", None)
        sliding = getattr(config, "sliding_window", None)
        if kinds is None:
            kinds = ["sliding_attention" if sliding is not None else "full_attention"] * num_layers
        kinds = list(kinds)
        windows = [sliding if kind in WINDOW_KINDS else None for kind in kinds]
    return kinds[:num_layers], windows[:num_layers]


def _config_value(config, *names):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


def _positions(model: nn.Module, config) -> tuple[str, int | None]:
    """How positions enter the model: ("rotary" | "partial rotary" | "learned absolute" | "none", table size).

    Raises for ALiBi."""
    base = _decoder(model)
    alibi = _config_value(config, "alibi")
    attn_config = getattr(config, "attn_config", None)
    if alibi is None and attn_config is not None:
        alibi = attn_config.get("alibi") if isinstance(attn_config, dict) else getattr(attn_config, "alibi", None)
    if alibi is None and getattr(config, "position_embedding_type", None) == "alibi":
        alibi = True
    if alibi is None:  # a modeling file that builds ALiBi biases and no flag to turn them off (BLOOM)
        module = sys.modules.get(type(base).__module__)
        alibi = module is not None and any("alibi" in name.lower() and callable(obj) for name, obj in vars(module).items())
    if alibi:
        raise _refuse(
            model,
            "it uses ALiBi position biases, which transformers builds from the attention mask's key positions; "
            "a compressed cache no longer stores one slot per position, so the biases would not line up. "
            "Use a model with rotary, learned absolute or no position embeddings",
        )
    rotary = any(type(m).__name__.lower().endswith("rotaryembedding") for m in base.modules())
    if rotary:
        rope = getattr(config, "rope_parameters", None) or {}
        factor = rope.get("partial_rotary_factor") if isinstance(rope, dict) else None
        factor = factor or _config_value(config, "partial_rotary_factor", "rotary_pct") or 1.0
        return ("partial rotary" if factor < 1 else "rotary"), None
    try:
        inputs = model.get_input_embeddings()
    except Exception:  # noqa: BLE001 - no input embeddings to tell apart
        inputs = None
    for name, module in base.named_modules():
        leaf = name.rsplit(".", 1)[-1].lower()
        if isinstance(module, nn.Embedding) and module is not inputs and ("pos" in leaf or leaf == "wpe"):
            table = _config_value(config, "max_position_embeddings", "n_positions") or module.num_embeddings
            return "learned absolute", int(table)
    return "none", None


def _check_attention_module(model: nn.Module, attn: nn.Module, i: int) -> str:
    """Refuse an attention module that LoCoCo cannot drive; return the name of its cache argument."""
    cls = type(attn)
    try:
        params = inspect.signature(attn.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins only
        params = {}
    cache_arg = next((name for name in CACHE_ARGUMENTS if name in params), None)
    if cache_arg is None:
        raise _refuse(
            model,
            f"the attention module of layer {i} ({cls.__name__}) takes no cache argument "
            f"({' / '.join(CACHE_ARGUMENTS)}); lococo's cache is handed to the attention through it",
        )
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        raise _refuse(
            model,
            f"the forward of {cls.__name__} (layer {i}) takes no **kwargs, so lococo cannot pass its cache layer "
            "to the attention function",
        )
    if "ALL_ATTENTION_FUNCTIONS" not in getattr(cls.forward, "__globals__", {}):
        raise _refuse(
            model,
            f"{cls.__name__} does not dispatch through transformers' AttentionInterface (ALL_ATTENTION_FUNCTIONS): "
            "lococo's attention function, which collects the scores compression needs, would never be called. "
            "Models whose attention was ported to transformers' v5 attention interface work",
        )
    return cache_arg


def _int_attr(module: nn.Module, *names) -> int | None:
    for name in names:
        value = getattr(module, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _heads(model: nn.Module, config, attn: nn.Module) -> tuple[int, int, int]:
    """(query heads, KV heads, head_dim), from the config first, then the attention module."""
    num_heads = _config_value(config, "num_attention_heads") or _int_attr(attn, "num_heads", "num_attention_heads")
    if not num_heads:
        raise _refuse(model, "neither its config nor its attention module gives the number of attention heads")
    groups = _int_attr(attn, "num_key_value_groups")
    num_kv_heads = (
        _config_value(config, "num_key_value_heads")
        or _int_attr(attn, "num_key_value_heads", "num_kv_heads")
        or (num_heads // groups if groups else None)
        or num_heads
    )
    head_dim = (
        _int_attr(attn, "head_dim", "head_size")
        or _config_value(config, "head_dim")
        or config.hidden_size // num_heads
    )
    v_dim = _config_value(config, "v_head_dim")
    k_dim = _config_value(config, "qk_head_dim")
    if k_dim is None and getattr(config, "qk_nope_head_dim", None) is not None:
        k_dim = config.qk_nope_head_dim + (getattr(config, "qk_rope_head_dim", 0) or 0)
    if getattr(config, "kv_lora_rank", None) is not None or (v_dim is not None and k_dim is not None and v_dim != k_dim):
        raise _refuse(
            model,
            f"its keys and values have different sizes per head (key {k_dim}, value {v_dim}: multi-head latent "
            "attention); LoCoCo's heads mix keys and values of one head_dim. Not supported yet",
        )
    if num_heads % num_kv_heads:
        raise _refuse(model, f"{num_heads} query heads do not split into {num_kv_heads} KV groups")
    return int(num_heads), int(num_kv_heads), int(head_dim)


def attention_layout(model: nn.Module) -> AttentionLayout:
    """Describe ``model``'s attention layers, or raise :class:`IncompatibleModelError` naming the exact reason."""
    config = _text_config(model)
    model_type = getattr(config, "model_type", None) or getattr(getattr(model, "config", None), "model_type", None)
    if getattr(config, "is_encoder_decoder", False):
        raise _refuse(model, "it is an encoder-decoder model; lococo compresses the self-attention cache of "
                             "decoder-only causal LMs")
    num_layers = _config_value(config, "num_hidden_layers")
    if not num_layers:
        raise _refuse(model, "its config has no num_hidden_layers")
    kinds, windows = _layer_kinds(config, num_layers)
    odd = sorted({k for k in kinds if k != "full_attention" and k not in WINDOW_KINDS})
    if odd:
        where = {k: [i for i, kind in enumerate(kinds) if kind == k] for k in odd}
        raise _refuse(
            model,
            f"layers of kind {', '.join(f'{k!r} (layers {v})' for k, v in where.items())}: lococo compresses "
            "key/value caches of attention layers; recurrent, state-space and linear-attention layers (hybrid "
            "models) and layers that share another layer's cache ('dummy') are not supported",
        )
    if "full_attention" not in kinds:
        raise _refuse(
            model,
            f"every layer uses sliding-window attention (sliding_window={getattr(config, 'sliding_window', None)}), "
            "so there is no global layer to compress and the cache is already bounded; load it with "
            "sliding_window=None (e.g. from_pretrained(..., sliding_window=None)) to use full attention",
        )
    positions, max_positions = _positions(model, config)
    layers = find_decoder_layers(model, num_layers)
    modules, devices, cache_args = [], [], []
    for i, layer in enumerate(layers):
        found = find_attention(layer, i)
        if found is None:
            raise _refuse(
                model,
                f"decoder layer {i} ({type(layer).__name__}) has no attention module whose layer_idx is {i}; lococo "
                "finds each layer's cache through its attention module's layer_idx (attention-free, recurrent or "
                "state-space layers are not supported)",
            )
        attn = found[1]
        cache_args.append(_check_attention_module(model, attn, i))
        modules.append(attn)
        devices.append(next(attn.parameters()).device)
    num_heads, num_kv_heads, head_dim = _heads(model, config, modules[0])
    return AttentionLayout(
        model_type=model_type,
        num_layers=len(layers),
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        layer_types=tuple(kinds),
        attention_modules=tuple(modules),
        devices=tuple(devices),
        windows=tuple(windows),
        positions=positions,
        max_positions=max_positions,
        cache_arguments=tuple(cache_args),
    )
