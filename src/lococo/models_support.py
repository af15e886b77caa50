"""Which models LoCoCo supports, and where their attention layers live: a capability check, not a list.

:func:`attention_layout` inspects what the compressing cache needs and either describes the model or raises
:class:`~lococo.errors.IncompatibleModelError` naming the exact reason and what would make it work. What a
model must offer depends on what is asked of it, in four levels (:data:`LEVELS`), each needing more than the
one before; a policy asks for one (:func:`policy_requirement`), and :func:`layout_for_policy` checks it:

- ``"cache"``, the ``full`` policy (nothing is compressed): the model takes a transformers ``Cache`` built as
  ``DynamicCache(config=...)`` builds it (every layer kind transformers has a dynamic layer for) and does not
  create a cache class of its own. Full-attention layers get a never-compacting
  :class:`~lococo.cache.CompressedLayer`, every other layer transformers' own layer;
- ``"window"``, the ``window`` policy (the most recent tokens, contiguous and in order): the model's
  full-attention layers are found (below) and store keys and values per token along their third axis, which
  the policy slices; positions must survive dropped tokens;
- ``"compression"``, the other policies that need no attention scores (``streaming``, ``random``,
  ``meanpool``): the same, with positions that do not depend on where a key sits in the cache;
- ``"scores"``, the score-based policies (``tova``, ``snapkv``, ``h2o``) and LoCoCo's heads: attention
  dispatched through transformers' ``AttentionInterface`` (so LoCoCo's attention function sees queries and
  keys), keys and values of one ``head_dim``, and every layer an attention layer.

What is checked:

- **decoder layers**: the ``nn.ModuleList`` of ``config.num_hidden_layers`` blocks under ``model.base_model``
  (``model.model.layers``, ``model.transformer.h``, ``model.gpt_neox.layers``, ...);
- **one attention module per attention layer** (``self_attn``, ``attn``, ``attention``, ``self_attention`` or
  any ``*Attention`` submodule) whose ``layer_idx`` is the layer's index and whose ``forward`` takes the cache
  (``past_key_values`` / ``layer_past``). Scores also need ``**kwargs`` and a dispatch through
  ``ALL_ATTENTION_FUNCTIONS``; attention written without it (Falcon, GPT-J, MPT) works with the policies that need
  no scores, one unpadded row at a time: LoCoCo's attention function is what masks the padding slots a
  compressed cache moves, so a left-padded batch through such a model is refused at the forward. That the
  attention calls ``cache.update(k, v, layer_idx)`` cannot be read statically: tests/test_model_matrix.py
  checks it for every family listed in the README;
- **heads**: query heads, KV heads and ``head_dim`` from the config or the module. Multi-head latent attention
  (DeepSeek-V3: values narrower than keys; transformers caches the shared latents, one "head" of width
  ``kv_lora_rank`` as keys and the rotated ``qk_rope_head_dim`` part as values) is compressed slot by slot by
  the policies that need no scores; scores and LoCoCo's heads, which work on per-head keys and values of one
  ``head_dim``, are refused;
- **layer kinds**, as transformers' own ``DynamicCache(config=...)`` reads them (``config.layer_types``, or
  ``sliding_window`` / ``attention_chunk_size`` per layer): full-attention layers are compressed,
  sliding-window and chunked layers keep transformers' own window layer, and the recurrent / state-space /
  linear-attention layers of hybrid models (Jamba, Qwen3-Next: ``linear_attention``, ``conv``) keep
  transformers' own state layer, their attention layers being compressed by the policies that need no scores.
  Layers that share another layer's cache (``dummy``) or hold both kinds of state (``hybrid``) are not
  compressed (``full`` only), and neither is a model with no full-attention layer;
- **positions**: rotary (full or partial, NoPE layers included) and no positional encoding work at any
  length, since stored keys carry their rotation and positions stay absolute. Learned absolute positions
  (GPT-2's ``wpe``) and rotary tables of fixed size (GPT-J's ``embed_positions``) work within the table; past
  it a clear error is raised at the forward (see :mod:`lococo.attention`; ``reindex_positions`` moves rotary keys only).
  ALiBi: BLOOM and Falcon build the biases from the 2-D attention mask, one column per token seen, which a
  compressed cache no longer matches (``full`` only); MPT counts them back from the newest key slot, which is
  each key's true distance only while the cache keeps the most recent tokens in order (``window`` and
  ``full``). ``reindex_positions`` (any policy, :mod:`lococo.positions`) re-rotates the stored keys, so it needs
  full rotary keys stored as keys in every compressed layer (not partial rotary, NoPE layers or latent attention).

Trained heads are tied to one architecture by :meth:`AttentionLayout.fingerprint` (``model_type`` included).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import re
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

STATE_KINDS = ("linear_attention", "conv")
"""Layer kinds of hybrid models that keep transformers' own recurrent / convolution state layer."""

ATTENTION_KINDS = ("full_attention", *WINDOW_KINDS)
"""Layer kinds whose attention module lococo looks for."""

LEVELS = ("cache", "window", "compression", "scores")
"""What a policy asks of a model, each level needing more than the one before (module docstring)."""


def _cpu_native(dtype: torch.dtype) -> bool | None:
    """Whether this CPU has native kernels for ``dtype`` (bf16: AVX512-BF16/AMX; fp16: AVX512-FP16/AMX); None
    when this torch cannot tell."""
    probe = {torch.bfloat16: "_is_mkldnn_bf16_supported", torch.float16: "_is_mkldnn_fp16_supported"}.get(dtype)
    check = getattr(torch.ops.mkldnn, probe, None) if probe else None
    return None if check is None else bool(check())


def cpu_lacks_native(dtype: torch.dtype) -> bool:
    """True when this CPU is known to have no native kernels for ``dtype`` (:func:`_cpu_native`)."""
    return _cpu_native(dtype) is False


def has_native_bf16(device: torch.device | str) -> bool:
    """Whether bf16 runs natively on ``device``: a CUDA GPU that supports it, or a CPU with AVX512-BF16/AMX
    (elsewhere bf16 kernels are emulated, 21-85x slower than fp32: benchmarks/results/half_precision_cpu.txt)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(_cpu_native(torch.bfloat16))


@dataclass(frozen=True)
class AttentionLayout:
    """The facts about a model that the heads and the cache need, and what it cannot do (``refusals``)."""

    model_type: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    layer_types: tuple[str, ...]
    attention_modules: tuple[nn.Module | None, ...]  # per layer; None for layers without attention
    devices: tuple[torch.device | None, ...]
    windows: tuple[int | None, ...] = ()  # the window of each sliding / chunked layer (None: full attention)
    positions: str = "rotary"  # "rotary", "partial rotary", "learned absolute", "alibi", "none"
    max_positions: int | None = None  # learned absolute / table rotary positions: the size of the table
    cache_arguments: tuple[str | None, ...] = field(default=())  # the cache argument of each attention forward
    layer_kwargs: tuple[dict, ...] = ()  # what transformers' own layer of each kind is built with
    interface: bool = True  # every attention module dispatches through AttentionInterface (lococo's wrapper)
    kv_layout: str = "standard"  # "standard" ([b, kv_heads, L, head_dim] keys and values) or "latent" (MLA)
    refusals: tuple[tuple[str, str], ...] = ()  # (level, reason): what this model cannot do, and why

    @property
    def compressed_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == "full_attention"]

    def refusal(self, level: str) -> str | None:
        """Why this model cannot serve ``level`` (the most basic reason), or None if it can."""
        rank = LEVELS.index(level)
        blocking = [(LEVELS.index(lv), reason) for lv, reason in self.refusals if LEVELS.index(lv) <= rank]
        return min(blocking, key=lambda item: item[0])[1] if blocking else None

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


def policy_requirement(policy) -> str:
    """The level of :data:`LEVELS` a policy (instance or class) needs: ``"cache"`` for ``full``, ``"window"``
    for a policy that keeps the most recent tokens in order (``contiguous``), ``"scores"`` for score-based and
    learned policies, ``"compression"`` for the other ones."""
    if not policy.compresses:
        return "cache"
    if policy.score_mode is not None or policy.learned:
        return "scores"
    return "window" if getattr(policy, "contiguous", False) else "compression"


def _working_policies(layout: AttentionLayout) -> list[str]:
    from .policies import POLICIES  # the registry imports this module (LoCoCo's heads)

    return sorted(name for name, cls in POLICIES.items() if layout.refusal(policy_requirement(cls)) is None)


def _name(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return f"{type(model).__name__} (model_type {getattr(config, 'model_type', None)!r})"


def _refuse(model: nn.Module, reason: str, layout: AttentionLayout | None = None,
            policy: str | None = None) -> IncompatibleModelError:
    what = f" with the {policy} policy" if policy else ""
    message = f"lococo cannot compress the cache of {_name(model)}{what}: {reason}"
    if layout is not None:
        works = _working_policies(layout)
        message += (f". The policies that work on this model: {', '.join(works)}" if works
                    else ". No lococo policy works on this model")
    return IncompatibleModelError(message)


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


def _layer_kinds(config, num_layers: int) -> tuple[list[str], list[int | None], list[dict]]:
    """Each layer's kind, window and layer arguments, read as transformers' ``DynamicCache(config=...)``
    reads them."""
    try:
        from transformers.cache_utils import get_layer_types_and_kwargs
    except ImportError:  # older transformers 5.x: config.layer_types or one sliding_window for every layer
        get_layer_types_and_kwargs = None
    if get_layer_types_and_kwargs is not None:
        kinds, kwargs = get_layer_types_and_kwargs(config)
        kinds, kwargs = list(kinds), [dict(kw) for kw in kwargs]
        windows = [kw.get("sliding_window") if kind in WINDOW_KINDS else None for kind, kw in zip(kinds, kwargs, strict=True)]
    else:
        kinds = getattr(config, "layer_types", None)
        sliding = getattr(config, "sliding_window", None)
        if kinds is None:
            kinds = ["sliding_attention" if sliding is not None else "full_attention"] * num_layers
        kinds = list(kinds)
        windows = [sliding if kind in WINDOW_KINDS else None for kind in kinds]
        kwargs = [{"sliding_window": w} if w else {} for w in windows]
    return kinds[:num_layers], windows[:num_layers], kwargs[:num_layers]


def _dynamic_layer_kinds() -> set[str]:
    try:
        from transformers.cache_utils import DYNAMIC_LAYER_TYPE_MAPPING
    except ImportError:  # older transformers 5.x
        return {"full_attention", *WINDOW_KINDS}
    return set(DYNAMIC_LAYER_TYPE_MAPPING)


@functools.cache
def _own_cache_class(decoder_cls: type) -> str | None:
    """The cache class a decoder's ``forward`` creates when it is given none, if it is not ``DynamicCache``."""
    try:
        source = inspect.getsource(decoder_cls.forward)
    except (OSError, TypeError):
        return None
    found = re.search(r"past_key_values\s*=\s*([A-Za-z_][A-Za-z0-9_]*Cache)\(", source)
    return found.group(1) if found and found.group(1) != "DynamicCache" else None


def _config_value(config, *names):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


def _alibi(model: nn.Module, config) -> bool:
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
    return bool(alibi)


def _positions(model: nn.Module, config, modules: list[nn.Module], head_dim: int | None) -> tuple[str, int | None]:
    """How positions enter the model: ("rotary" | "partial rotary" | "learned absolute" | "alibi" | "none",
    the size of a position table where there is one)."""
    base = _decoder(model)
    if _alibi(model, config):
        return "alibi", None
    rotary = any(type(m).__name__.lower().endswith("rotaryembedding") for m in base.modules())
    if rotary:
        rope = getattr(config, "rope_parameters", None) or {}
        factor = rope.get("partial_rotary_factor") if isinstance(rope, dict) else None
        factor = factor or _config_value(config, "partial_rotary_factor", "rotary_pct") or 1.0
        return ("partial rotary" if factor < 1 else "rotary"), None
    # a precomputed sin/cos table gathered at the position ids (GPT-J, CodeGen): rotary within the table
    table = next((m.embed_positions for m in modules if isinstance(getattr(m, "embed_positions", None), torch.Tensor)),
                 None)
    if table is not None:
        rotary_dim = _config_value(config, "rotary_dim")
        partial = rotary_dim is not None and head_dim is not None and rotary_dim < head_dim
        return ("partial rotary" if partial else "rotary"), int(table.shape[-2])
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


def _alibi_refusal(modules: list[nn.Module]) -> tuple[str, str]:
    """(level, reason) for an ALiBi model, from how its attention receives the biases."""
    params = set()
    for attn in modules:
        with contextlib.suppress(TypeError, ValueError):  # builtins only
            params |= set(inspect.signature(attn.forward).parameters)
    if "position_bias" in params and "alibi" not in params:  # MPT: biases sliced by the number of keys
        return "compression", (
            "it uses ALiBi position biases counted back from the newest key slot (the bias of a key is its slot's "
            "distance from the last slot), which is each key's true distance only while the cache keeps the most "
            "recent tokens in order; a policy that keeps older tokens (sinks, random or merged slots) would "
            "silently give them the distances of their slots"
        )
    return "window", (
        "it uses ALiBi position biases, which transformers builds from the 2-D attention mask, one column per "
        "token seen; a compressed cache holds fewer keys than tokens seen, so the biases would not line up with "
        "them. Compressing it needs biases built from the stored tokens' positions (not implemented); use a "
        "model with rotary, learned absolute or no position embeddings"
    )


def _check_attention_module(attn: nn.Module, i: int) -> tuple[str | None, list[tuple[str, str]]]:
    """The name of the attention module's cache argument, and what it keeps lococo from doing (level, reason)."""
    cls = type(attn)
    try:
        params = inspect.signature(attn.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins only
        params = {}
    cache_arg = next((name for name in CACHE_ARGUMENTS if name in params), None)
    if cache_arg is None:
        return None, [("window", f"the attention module of layer {i} ({cls.__name__}) takes no cache argument "
                                 f"({' / '.join(CACHE_ARGUMENTS)}); lococo's cache is handed to the attention "
                                 "through it")]
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return cache_arg, [("scores", f"the forward of {cls.__name__} (layer {i}) takes no **kwargs, so lococo "
                                      "cannot pass its cache layer to the attention function that collects scores")]
    if "ALL_ATTENTION_FUNCTIONS" not in getattr(cls.forward, "__globals__", {}):
        return cache_arg, [("scores", f"{cls.__name__} does not dispatch through transformers' AttentionInterface "
                                      "(ALL_ATTENTION_FUNCTIONS): lococo's attention function, which collects the "
                                      "scores compression needs, would never be called. Models whose attention was "
                                      "ported to transformers' v5 attention interface work")]
    return cache_arg, []


def _int_attr(module: nn.Module, *names) -> int | None:
    for name in names:
        value = getattr(module, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _heads(config, attn: nn.Module | None) -> tuple[int, int, int, list[tuple[str, str]], str]:
    """(query heads, KV heads, head_dim, refusals, KV layout), from the config first, then the attention
    module."""
    attn = attn if attn is not None else nn.Module()
    num_heads = _config_value(config, "num_attention_heads", "n_head", "n_heads") or _int_attr(
        attn, "num_heads", "num_attention_heads")
    if not num_heads:
        return 0, 0, 0, [("window", "neither its config nor its attention module gives the number of attention "
                                    "heads")], "standard"
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
    refusals, layout = [], "standard"
    v_dim = _config_value(config, "v_head_dim")
    k_dim = _config_value(config, "qk_head_dim")
    if k_dim is None and getattr(config, "qk_nope_head_dim", None) is not None:
        k_dim = config.qk_nope_head_dim + (getattr(config, "qk_rope_head_dim", 0) or 0)
    if getattr(config, "kv_lora_rank", None) is not None or (v_dim is not None and k_dim is not None and v_dim != k_dim):
        layout = "latent"
        refusals.append(("scores", f"its keys and values have different sizes per head (key {k_dim}, value {v_dim}: "
                                   "multi-head latent attention); attention scores and LoCoCo's heads work on "
                                   "per-head keys and values of one head_dim. Not supported yet"))
    elif num_heads % num_kv_heads:
        refusals.append(("scores", f"{num_heads} query heads do not split into {num_kv_heads} KV groups"))
    return int(num_heads), int(num_kv_heads), int(head_dim), refusals, layout


def _inspect(model: nn.Module) -> AttentionLayout:
    """Everything :func:`attention_layout` reads, with what the model cannot do in ``refusals`` (raises only
    when the model cannot even take lococo's cache)."""
    config = _text_config(model)
    model_type = getattr(config, "model_type", None) or getattr(getattr(model, "config", None), "model_type", None)
    if getattr(config, "is_encoder_decoder", False):
        raise _refuse(model, "it is an encoder-decoder model; lococo compresses the self-attention cache of "
                             "decoder-only causal LMs")
    num_layers = _config_value(config, "num_hidden_layers")
    if not num_layers:
        raise _refuse(model, "its config has no num_hidden_layers")
    own = _own_cache_class(type(_decoder(model)))
    if own is not None:
        raise _refuse(model, f"transformers gives it a cache class of its own ({own}), not the DynamicCache "
                             "layers lococo's cache mirrors")
    kinds, windows, layer_kwargs = _layer_kinds(config, num_layers)
    unknown = sorted({k for k in kinds if k not in _dynamic_layer_kinds()})
    if unknown:
        raise _refuse(model, f"layers of kind {', '.join(map(repr, unknown))}, for which transformers' "
                             "DynamicCache has no layer class")
    refusals: list[tuple[str, str]] = []

    def where(kind_set) -> str:
        found = {k: [i for i, kind in enumerate(kinds) if kind == k] for k in sorted(set(kinds) & set(kind_set))}
        return ", ".join(f"{k!r} (layers {v})" for k, v in found.items())

    states = where(STATE_KINDS)
    if states:
        refusals.append(("scores", f"it is a hybrid model: layers of kind {states} keep transformers' own "
                                   "recurrent / convolution state, and only its attention layers are compressed; "
                                   "attention scores and LoCoCo's heads are not supported on hybrid models yet"))
    odd = where(set(kinds) - {"full_attention", *WINDOW_KINDS, *STATE_KINDS})
    if odd:
        refusals.append(("window", f"layers of kind {odd}: lococo compresses 'full_attention' layers beside "
                                   "sliding, chunked and recurrent ones, not layers that share another layer's "
                                   "cache ('dummy'), hold both a recurrent state and keys and values ('hybrid') or "
                                   "keep an indexer ('indexed_attention')"))
    if "full_attention" not in kinds:
        refusals.append(("window", "every attention layer uses sliding-window attention (sliding_window="
                                   f"{getattr(config, 'sliding_window', None)}), so there is no global layer to "
                                   "compress and the cache is already bounded; load it with sliding_window=None "
                                   "(e.g. from_pretrained(..., sliding_window=None)) to use full attention"))

    modules: list[nn.Module | None] = [None] * num_layers
    cache_args: list[str | None] = [None] * num_layers
    interface = True
    try:
        layers = find_decoder_layers(model, num_layers)
    except IncompatibleModelError as error:
        layers = None
        interface = False
        refusals.append(("window", str(error).split(": ", 1)[1]))
    for i, layer in enumerate(layers or ()):
        if kinds[i] not in ATTENTION_KINDS:
            continue
        found = find_attention(layer, i)
        if found is None:
            interface = False
            refusals.append(("window", f"decoder layer {i} ({type(layer).__name__}) has no attention module whose "
                                       f"layer_idx is {i}; lococo finds each layer's cache through its attention "
                                       "module's layer_idx (attention-free layers are not supported)"))
            continue
        modules[i] = found[1]
        cache_args[i], problems = _check_attention_module(found[1], i)
        interface = interface and not problems
        refusals += problems
    present = [m for m in modules if m is not None]
    if not present:
        interface = False
    num_heads, num_kv_heads, head_dim, problems, kv_layout = _heads(config, present[0] if present else None)
    refusals += problems
    positions, max_positions = _positions(model, config, present, head_dim)
    if positions == "alibi":
        refusals.append(_alibi_refusal(present))
    devices = [None if m is None else next(m.parameters()).device for m in modules]
    return AttentionLayout(
        model_type=model_type,
        num_layers=num_layers,
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
        layer_kwargs=tuple(layer_kwargs),
        interface=interface,
        kv_layout=kv_layout,
        refusals=tuple(dict.fromkeys(refusals)),
    )


def attention_layout(model: nn.Module, needs: str = "scores") -> AttentionLayout:
    """Describe ``model``'s attention layers, or raise :class:`IncompatibleModelError` naming the exact reason
    it cannot serve ``needs`` (a level of :data:`LEVELS`; the default, ``"scores"``, is what LoCoCo's heads and
    the score-based policies need)."""
    if needs not in LEVELS:
        raise ValueError(f"needs must be one of {LEVELS}, got {needs!r}")
    layout = _inspect(model)
    reason = layout.refusal(needs)
    if reason is not None:
        raise _refuse(model, reason, layout)
    return layout


def reindex_refusal(model: nn.Module, layout: AttentionLayout | None = None) -> str | None:
    """Why ``reindex_positions`` cannot run on ``model`` (it re-rotates stored keys with the model's own RoPE), or
    None if it can: full rotary keys stored as keys in every compressed layer, and a rotary embedding on the
    decoder whose frequencies do not depend on the length read."""
    layout = layout or _inspect(model)
    rope = getattr(_text_config(model), "no_rope_layers", None) or [1] * layout.num_layers
    nope = [i for i in layout.compressed_layers if i < len(rope) and not rope[i]]
    if layout.kv_layout != "standard" or layout.positions != "rotary" or nope:
        where = f", NoPE layers {nope}" if nope else ""
        return (f"reindex_positions re-rotates the stored keys, which needs full rotary keys stored as keys in every "
                f"compressed layer (this model: {layout.positions} positions, {layout.kv_layout} keys and "
                f"values{where}); use reindex_positions=False")
    rotary = getattr(_decoder(model), "rotary_emb", None)
    if rotary is None:
        return ("reindex_positions needs the model's rotary embedding (`rotary_emb` on the decoder), which this "
                "model does not have; use reindex_positions=False")
    if "dynamic" in str(getattr(rotary, "rope_type", "")):
        return ("reindex_positions needs a RoPE whose frequencies do not depend on the length read (this model uses "
                "dynamic NTK scaling); use reindex_positions=False")
    return None


def layout_for_policy(model: nn.Module, policy, reindex_positions: bool = False) -> AttentionLayout:
    """The layout of ``model`` if ``policy`` (with ``reindex_positions``) can run on it, else
    :class:`IncompatibleModelError` naming the reason and the policies that do work on it."""
    layout = _inspect(model)
    reason = layout.refusal(policy_requirement(policy))
    if reason is None and reindex_positions and policy.compresses:
        reason = reindex_refusal(model, layout)
    if reason is not None:
        raise _refuse(model, reason, layout, policy=policy.name)
    return layout
