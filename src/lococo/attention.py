"""Importance scores without eager attention, through transformers' own plug-in points.

Compression policies need to know how much attention each stored slot received. Eager attention has the
probability matrix; sdpa and flash do not. Instead of forking the modeling file, LoCoCo:

1. registers attention functions ``lococo_<impl>`` (``lococo_sdpa``, ``lococo_eager``, ``lococo_fa2`` for
   ``flash_attention_2``, ...) in transformers' ``AttentionInterface`` that call the original implementation
   and, *only when the cache layer asks*,
   compute column sums of the softmax probabilities from the same queries and keys (blockwise, GQA-native:
   query heads of a KV group are summed, never repeated);
2. adds a forward pre-hook on each attention module that hands the module's cache layer to that function
   (the attention module receives the cache but does not forward it), and tells the layer which of the
   incoming tokens are padding.

`enable_scoring(model)` does both (idempotent); `disable_scoring(model)` undoes both. For a model with a position
table (GPT-2's and OPT's learned absolute positions, GPT-J's rotary table) it also adds a pre-hook on the model
that refuses, with a clear error, a forward through a compressing cache that would read past the table (see
:mod:`lococo.models_support`). A model whose attention does not dispatch through the ``AttentionInterface``
(Falcon, GPT-J, BLOOM, MPT) keeps its own attention: no wrapper, no scores, and a pre-hook that refuses a
left-padded batch through a compressing cache, since the wrapper is what masks the padding slots it moves.

Families differ, and the wrapper follows each one: ``eager`` means the eager attention of the module's own
modeling file (GPT-2's, Gemma 2's soft-capped one, GPT-OSS's with sinks); the scores apply the logit
soft-capping (``softcap``) and attention sinks (``s_aux``) the model passes, so they are the probabilities the
model itself uses; the cache is found under the name the module's ``forward`` gives it (``past_key_values``,
GPT-NeoX's ``layer_past``).

Masks: the wrapper takes the mask each implementation receives from transformers' own mask functions:
4-D boolean (sdpa) or additive float (eager) masks, and for flash attention ``None`` or a 2-D padding mask
``[batch, kv]`` (flash applies causality itself). Wrapper names never contain "flash", since transformers
treats such names as kernels to import; a flash kernel is called with a view of the module whose config
names the real implementation, which is how flash picks its kernel. ``flex_attention`` (``BlockMask``) is
refused with a clear error.
"""

from __future__ import annotations

import functools
import inspect
import re

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import eager_attention_forward

from .cache import CompressedCache, CompressedLayer
from .errors import IncompatibleModelError
from .models_support import attention_layout

PREFIX = "lococo_"
SUPPORTED = "eager, sdpa and flash attention (flash_attention_2/_3 or a kernels-hub flash kernel)"
_BASES: dict[str, str] = {}  # registered wrapper name -> the implementation it wraps
_STATE_ATTR = "_lococo_scoring"
_QUERY_BLOCK = 128  # queries per block: bounds the probability matrix held at once (32-256: the same speed on CPU)


def _eager_of(module: nn.Module):
    """The eager attention of ``module``'s own modeling file (GPT-2's, Gemma 2's soft-capped one, GPT-OSS's with
    sinks, ...), as the module itself would fall back to; Llama's when its file has none."""
    return getattr(type(module).forward, "__globals__", {}).get("eager_attention_forward", eager_attention_forward)


def _base_function(name: str, module: nn.Module):
    if name == "eager":
        return _eager_of(module)
    return ALL_ATTENTION_FUNCTIONS[name]


def _probability_blocks(query: torch.Tensor, key: torch.Tensor, scaling: float, visible: torch.Tensor,
                        softcap: float | None = None, sinks: torch.Tensor | None = None, causal: bool = False):
    """Softmax probabilities ``[b, kv, g, block, n]`` for consecutive blocks of queries (GQA-native, fp32).

    The query heads of a KV group are stacked on the query axis, so each block is one plain batched
    matmul against the group's keys (never repeated). Every query sees at least itself (padding queries
    are given their own slot), so no row is all -inf. ``softcap`` caps the logits as Gemma 2 does
    (``softcap * tanh(logits / softcap)``); ``sinks [H]`` (GPT-OSS's ``s_aux``) adds one logit per query head
    to the softmax's denominator, so the probabilities over the keys sum to less than 1, as in that model.

    ``n`` is the number of keys ``L``, or with ``causal`` (``visible`` is bottom-right causal: query ``i``
    sees no key after ``L - q + i``) only the keys a block's queries can see: the keys after them, whose
    probability is exactly 0, are skipped (a third of the work for 512 queries over 128 + 512 keys).
    """
    b, n_heads, q_len, d = query.shape
    kv_heads = key.shape[1]
    groups = n_heads // kv_heads
    q = (query.float() * scaling).reshape(b, kv_heads, groups, q_len, d)
    k_t = key.float().transpose(-1, -2)  # [b, kv, d, L]
    sink = None if sinks is None else sinks.detach().float().reshape(1, kv_heads, groups, 1, 1).to(query.device)
    zero = torch.zeros((), dtype=torch.float32, device=query.device)
    for start in range(0, q_len, _QUERY_BLOCK):  # masks are applied per block: no [q, L] float tensor
        stop = min(start + _QUERY_BLOCK, q_len)
        seen = key.shape[2] - q_len + stop if causal else key.shape[2]
        block = q[:, :, :, start:stop].reshape(b, kv_heads, groups * (stop - start), d)
        logits = torch.matmul(block, k_t[..., :seen]).view(b, kv_heads, groups, stop - start, seen)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        # an additive bias shared by the heads: ~10x cheaper than a masked fill of the [kv, g, block, n] logits
        logits.add_(zero.masked_fill(~visible[:, None, None, start:stop, :seen], float("-inf")))
        if sink is None:
            yield start, stop, logits.softmax(dim=-1)
        else:
            norm = torch.logaddexp(torch.logsumexp(logits, dim=-1, keepdim=True), sink)
            yield start, stop, (logits - norm).exp()


def _accumulate(total: torch.Tensor, probs: torch.Tensor, query_valid: torch.Tensor | None, start: int, stop: int):
    if query_valid is not None:
        probs = probs * query_valid[:, None, None, start:stop, None]
    total[..., : probs.shape[-1]] += probs.detach().sum(dim=(2, 3))


def last_queries(query: torch.Tensor, visible: torch.Tensor, query_valid: torch.Tensor | None, window: int):
    """``query``, ``visible`` and ``query_valid`` cut to the last ``window`` queries (all of them for 0)."""
    if not window:
        return query, visible, query_valid
    return query[:, :, -window:], visible[:, -window:], None if query_valid is None else query_valid[:, -window:]


def column_scores(
    query: torch.Tensor,
    key: torch.Tensor,
    scaling: float,
    visible: torch.Tensor,
    query_valid: torch.Tensor | None,
    window: int = 0,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    causal: bool = False,
) -> torch.Tensor:
    """Sum of softmax attention probabilities received by each key: ``[b, kv_heads, L]``.

    ``query [b, H, q, d]``, ``key [b, KV, L, d]``, ``visible [b, q, L]`` bool. Query heads sharing a KV
    head are summed (GQA). Padding queries contribute nothing. ``window > 0`` keeps only the last
    ``window`` queries (SnapKV's observation window, TOVA's latest query). ``softcap``, ``sinks`` and
    ``causal`` (skip the keys after the queries): as :func:`_probability_blocks`.
    """
    query, visible, query_valid = last_queries(query, visible, query_valid, window)
    total = torch.zeros(key.shape[:3], dtype=torch.float32, device=key.device)
    with torch.no_grad():
        for start, stop, probs in _probability_blocks(query, key, scaling, visible, softcap, sinks, causal):
            _accumulate(total, probs, query_valid, start, stop)
    return total


def attention_with_scores(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    scaling: float,
    visible: torch.Tensor,
    query_valid: torch.Tensor | None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
    causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention output ``[b, q, H, d]`` (transformers' layout) and the column scores, from one pass.

    When a forward needs scores over all its queries, computing the probabilities once and using them for
    both the output and the scores is cheaper than running sdpa and then the scores. Differentiable in
    the output (training); the scores are detached.
    """
    b, n_heads, q_len, _ = query.shape
    v = value.float()  # [b, kv, L, dv]
    total = torch.zeros(key.shape[:3], dtype=torch.float32, device=key.device)
    outs = []
    for start, stop, probs in _probability_blocks(query, key, scaling, visible, softcap, sinks, causal):
        _accumulate(total, probs, query_valid, start, stop)
        b_, kv, g, block, seen = probs.shape
        outs.append(torch.matmul(probs.view(b_, kv, g * block, seen), v[:, :, :seen]).view(b_, kv, g, block, -1))
    out = torch.cat(outs, dim=3).reshape(b, n_heads, q_len, value.shape[-1])
    return out.transpose(1, 2).contiguous().to(query.dtype), total


def _visible_from_mask(mask, b: int, q_len: int, kv_len: int, device) -> torch.Tensor:
    """Boolean ``[b, q, kv]`` visibility from the mask an attention implementation receives.

    ``None`` (causal, no padding), a 2-D padding mask ``[b, >= kv]`` (flash: causality is implicit), or a
    4-D boolean / additive float mask. Causality is bottom-right aligned: every stored slot is visible.
    """
    if mask is not None and not isinstance(mask, torch.Tensor):
        raise IncompatibleModelError(
            f"lococo cannot read attention masks of type {type(mask).__name__}; supported: {SUPPORTED}"
        )
    if mask is None or mask.dim() == 2:
        rows = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
        causal = (torch.arange(kv_len, device=device)[None, :] <= rows)[None]
        if mask is None:
            return causal.expand(b, q_len, kv_len)
        return causal & mask[:, None, -kv_len:].to(device=device, dtype=torch.bool)
    if mask.dim() != 4:
        raise IncompatibleModelError(f"attention mask of shape {tuple(mask.shape)}: expected None, 2-D or 4-D")
    mask = mask[:, 0]
    vis = mask if mask.dtype == torch.bool else mask == 0
    return vis[..., -kv_len:].expand(b, q_len, kv_len)


def _layer_visibility(layer, model_mask, b: int, q_len: int, kv_len: int, device) -> torch.Tensor:
    """Visibility for a compressed layer: the layer's own slot validity for memory, causal+padding for new tokens."""
    new_part = _visible_from_mask(model_mask, b, q_len, kv_len, device)
    if layer.valid is None:
        return new_part
    stored = kv_len - q_len
    valid = layer.valid.to(device)
    memory = valid[:, None, :stored].expand(b, q_len, stored)
    own = new_part[..., stored:] & valid[:, None, stored:]
    eye = torch.eye(q_len, dtype=torch.bool, device=device)[None]
    return torch.cat([memory, own | eye], dim=-1)  # a padding query sees itself: no NaN rows


def _as_mask(visible: torch.Tensor, like: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    if like is not None and like.dtype != torch.bool:
        zero = torch.zeros((), dtype=dtype, device=visible.device)
        return torch.where(visible, zero, torch.finfo(dtype).min)[:, None]
    return visible[:, None]


class _ConfigView:
    """A model config that names ``implementation`` as its attention implementation (for flash kernels)."""

    def __init__(self, config, implementation: str) -> None:
        object.__setattr__(self, "_config", config)
        object.__setattr__(self, "_attn_implementation", implementation)

    def __getattr__(self, name: str):
        return getattr(self._config, name)


class _ModuleView:
    """An attention module as a flash kernel must see it: its config names the real flash implementation."""

    def __init__(self, module: nn.Module, implementation: str) -> None:
        object.__setattr__(self, "_module", module)
        object.__setattr__(self, "config", _ConfigView(module.config, implementation))

    def __getattr__(self, name: str):
        return getattr(self._module, name)


def _is_flash(name: str) -> bool:
    return "flash" in name


_FUSABLE = frozenset({"dropout", "scaling", "softcap", "s_aux", "sliding_window", "position_ids", "cache_position",
                      "use_cache", "output_attentions", "is_causal"})
"""Keyword arguments the fused path (probabilities computed once for the output and the scores) reproduces or
that do not change a global layer's attention; any other argument that is not None or False sends the output to
the model's own attention implementation (the scores are then computed beside it)."""


def _fusable(kwargs: dict) -> bool:
    if kwargs.get("dropout") or kwargs.get("sliding_window") is not None:
        return False
    return all(v is None or v is False or k in _FUSABLE for k, v in kwargs.items())


def _score_arguments(module: nn.Module, query: torch.Tensor, kwargs: dict) -> tuple:
    """(scaling, softcap, sinks) as the model's own attention applies them (for the scores and observers)."""
    scaling = kwargs.get("scaling")
    if scaling is None:
        scaling = getattr(module, "scaling", None) or query.shape[-1] ** -0.5
    return scaling, kwargs.get("softcap"), kwargs.get("s_aux")


def make_attention_function(base_name: str):
    """The ``lococo_<base_name>`` attention function: the base implementation plus on-demand scores."""
    flash = _is_flash(base_name)

    def call_base(module, query, key, value, mask, **kwargs):
        function = _base_function(base_name, module)  # looked up per call
        if flash:
            module = _ModuleView(module, base_name)
        return function(module, query, key, value, mask, **kwargs)

    def lococo_attention(module, query, key, value, attention_mask, lococo_layer=None, **kwargs):
        if lococo_layer is None:
            return call_base(module, query, key, value, attention_mask, **kwargs)
        b, _, q_len, _ = query.shape
        kv_len = key.shape[2]
        if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 4 and attention_mask.shape[-1] > kv_len:
            attention_mask = attention_mask[..., -kv_len:]  # a layer keeping fewer slots than the longest one
        visible = None
        if lococo_layer.valid is not None:
            visible = _layer_visibility(lococo_layer, attention_mask, b, q_len, kv_len, query.device)
            # flash takes a 2-D padding mask (slots are left-aligned padding, so its causal alignment holds)
            attention_mask = lococo_layer.valid.to(query.device) if flash else _as_mask(visible, attention_mask,
                                                                                         query.dtype)
        window = lococo_layer.score_request()
        dropout = kwargs.get("dropout", 0.0) if module.training else 0.0
        fused = (window is not None and (window == 0 or window >= q_len) and not dropout and _fusable(kwargs)
                 and not lococo_layer.observes)
        if not fused:
            out, weights = call_base(module, query, key, value, attention_mask, **kwargs)
        if lococo_layer.observes:  # a teacher layer of layer-wise training (lococo.training.layerwise)
            lococo_layer.observe(query, out, *_score_arguments(module, query, kwargs))
        if window is None:
            return out, weights
        scaling, softcap, sinks = _score_arguments(module, query, kwargs)
        if visible is None:
            visible = _visible_from_mask(attention_mask, b, q_len, kv_len, query.device)
        query_valid = None
        if lococo_layer.valid is not None:
            query_valid = lococo_layer.valid[:, kv_len - q_len :].to(query.device)
        with torch.profiler.record_function("lococo.scores"):
            causal = lococo_layer.causal_queries
            if lococo_layer.score_kernel == "flex" and sinks is None:
                from .flex_scores import flex_attention_with_scores, flex_column_scores

                if fused:
                    out, scores = flex_attention_with_scores(query, key, value, scaling, visible, query_valid, softcap)
                    weights = None
                else:
                    scores = flex_column_scores(query, key, scaling, visible, query_valid, window, softcap)
            elif fused:
                out, scores = attention_with_scores(query, key, value, scaling, visible, query_valid, softcap, sinks,
                                                    causal)
                weights = None
            else:
                scores = column_scores(query, key, scaling, visible, query_valid, window, softcap, sinks, causal)
        lococo_layer.record_scores(scores, q_len)
        return out, weights

    lococo_attention.__name__ = f"lococo_{base_name}"
    return lococo_attention


def wrapper_name(base_name: str) -> str:
    """The registered name of the wrapper of ``base_name``: no "flash" in it (transformers would import it)."""
    return PREFIX + re.sub(r"[^0-9A-Za-z]+", "_", base_name.replace("flash_attention_", "fa").replace("flash", "fa"))


def _register(base_name: str) -> str:
    name = wrapper_name(base_name)
    if name not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, make_attention_function(base_name))
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base_name])
        _BASES[name] = base_name
    return name


def _incoming_validity(mask: torch.Tensor | None, q_len: int) -> torch.Tensor | None:
    """Which incoming tokens are real (from a 2-D padding mask, or the diagonal of a 4-D mask), or None."""
    if not isinstance(mask, torch.Tensor):
        return None
    if mask.dim() == 2:
        return mask[:, -q_len:].to(torch.bool)
    if mask.dim() != 4:
        return None
    kv_len = mask.shape[-1]
    diag = mask[:, 0, torch.arange(q_len), kv_len - q_len + torch.arange(q_len)]
    return diag if diag.dtype == torch.bool else diag == 0


def _is_causal(mask, q_len: int) -> bool:
    """Whether no incoming token sees a later one under ``mask`` (None and 2-D padding masks leave causality to
    the kernel, so they are). Worth knowing only for more than one block of queries: then the score pass skips
    the keys after each block (:func:`_probability_blocks`); one host copy for a 4-D mask."""
    if not isinstance(mask, torch.Tensor) or mask.dim() == 2:
        return True
    if q_len <= _QUERY_BLOCK or mask.dim() != 4:
        return False
    new = mask[:, :, -q_len:, mask.shape[-1] - q_len :]
    new = new if new.dtype == torch.bool else new == 0
    return not bool(new.triu(1).any())


def _incoming(cache, mask, q_len: int) -> tuple[tuple[torch.Tensor, list[int]] | None, bool]:
    """Validity of the incoming tokens and its per-row counts (None if all are real), and whether the mask is
    causal (:func:`_is_causal`).

    Every layer of a forward receives the same mask object, so this is worked out once per forward (the
    cache remembers the last mask): at most two device-to-host copies per forward, none without a mask.
    """
    memo = cache.incoming_memo
    if memo is not None and memo[0] is mask and memo[1] == q_len:
        return memo[2], memo[3]
    valid = _incoming_validity(mask, q_len)
    result = None
    if valid is not None:
        counts = valid.sum(-1).tolist()  # the one host copy of this forward
        if min(counts) < q_len:
            result = (valid, counts)
    causal = _is_causal(mask, q_len)
    cache.incoming_memo = (mask, q_len, result, causal)
    return result, causal


def _argument(args, kwargs, name: str, index: int | None):
    """An argument of an attention module's forward, by keyword or at its position (``index``, self excluded)."""
    if name in kwargs:
        return kwargs[name]
    if index is not None and index < len(args):
        return args[index]
    return None


def _pre_hook(module: nn.Module, args, kwargs, *, cache_arg: str = "past_key_values", cache_index=None,
              mask_index=None):
    cache = _argument(args, kwargs, cache_arg, cache_index)
    layers = getattr(cache, "layers", None)
    if not layers or module.layer_idx >= len(layers):
        return None
    layer = layers[module.layer_idx]
    if not isinstance(layer, CompressedLayer):
        return None
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    layer.incoming_valid, layer.causal_queries = _incoming(
        cache, _argument(args, kwargs, "attention_mask", mask_index), hidden.shape[1])
    kwargs["lococo_layer"] = layer
    return args, kwargs


def _attention_hook(module: nn.Module, cache_arg: str):
    """The pre-hook of one attention module: it reads the cache from ``cache_arg`` (``past_key_values``,
    GPT-NeoX's ``layer_past``, ...), by keyword or position."""
    names = [n for n in inspect.signature(module.forward).parameters]
    index = {n: i for i, n in enumerate(names)}
    return functools.partial(_pre_hook, cache_arg=cache_arg, cache_index=index.get(cache_arg),
                             mask_index=index.get("attention_mask"))


def _position_guard(limit: int, model_type: str, table: str, module: nn.Module, args, kwargs):
    """Refuse a forward through a compressing cache that would reach past a position table."""
    cache = kwargs.get("past_key_values")
    if not isinstance(cache, CompressedCache):
        return None
    tokens = kwargs.get("input_ids", args[0] if args else None)
    if tokens is None:
        tokens = kwargs.get("inputs_embeds")
    if tokens is None:
        return None
    reach = cache.get_seq_length() + tokens.shape[1]
    if reach > limit:
        raise IncompatibleModelError(
            f"this {model_type} model has {table} for {limit} positions (its config's max_position_embeddings) "
            f"and this forward would read token {reach}: lococo's cache holds any length, but the model cannot "
            f"embed positions past its table. Read at most {limit} tokens with it (reindex_positions moves rotary "
            "keys and cannot lift a position table's limit)"
        )
    return None


def _padding_guard(model_type: str, module: nn.Module, args, kwargs):
    """Refuse a left-padded batch through a compressing cache on a model whose attention lococo does not wrap."""
    cache = kwargs.get("past_key_values")
    if not isinstance(cache, CompressedCache) or not cache.policy.compresses:
        return None
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and not bool(mask.all()):
        raise IncompatibleModelError(
            f"this {model_type} model's attention does not dispatch through transformers' AttentionInterface, and "
            "lococo's attention function is what masks the padding slots a compressed cache moves: a left-padded "
            f"batch through the {cache.policy.name} policy would attend to the wrong slots. Read the rows one at a "
            "time (no padding), or use the full policy"
        )
    return None


def enable_scoring(model: nn.Module) -> None:
    """Switch ``model`` to the ``lococo_<impl>`` attention function and install the pre-hooks (idempotent).

    A model whose attention does not dispatch through transformers' ``AttentionInterface`` (Falcon, GPT-J) keeps
    its attention implementation and gets no attention hooks: only the policies that need no scores run on it,
    and a pre-hook refuses left-padded batches through a compressing cache (see :mod:`lococo.models_support`).
    """
    if getattr(model, _STATE_ATTR, None) is not None:
        return
    layout = attention_layout(model, needs="cache")
    handles = []
    current = None
    if layout.interface:
        current = model.config._attn_implementation
        current = _BASES.get(current, current)
        if current is None or "flex" in current:
            raise IncompatibleModelError(
                f"lococo's compressing cache does not support attn_implementation={current!r} yet; supported: "
                f"{SUPPORTED}. Load the model with attn_implementation='sdpa' (or one of those)."
            )
        if current != "eager" and current not in ALL_ATTENTION_FUNCTIONS:
            raise IncompatibleModelError(f"unknown attention implementation {current!r}; supported: {SUPPORTED}")
        name = _register(current)
        model.set_attn_implementation(name)
        handles += [
            m.register_forward_pre_hook(_attention_hook(m, arg), with_kwargs=True)
            for m, arg in zip(layout.attention_modules, layout.cache_arguments, strict=True)
            if m is not None
        ]
    else:
        guard = functools.partial(_padding_guard, layout.model_type)
        handles.append(model.register_forward_pre_hook(guard, with_kwargs=True))
    if layout.max_positions:  # a position table: a clear error past it, not an index error
        table = ("learned absolute position embeddings" if layout.positions == "learned absolute"
                 else "a rotary table")
        guard = functools.partial(_position_guard, layout.max_positions, layout.model_type, table)
        handles.append(model.register_forward_pre_hook(guard, with_kwargs=True))
    object.__setattr__(model, _STATE_ATTR, (current, handles))


def disable_scoring(model: nn.Module) -> None:
    """Undo :func:`enable_scoring`: original attention implementation, no hooks."""
    state = getattr(model, _STATE_ATTR, None)
    if state is None:
        return
    original, handles = state
    for handle in handles:
        handle.remove()
    if original is not None:
        model.set_attn_implementation(original)
    object.__delattr__(model, _STATE_ATTR)
