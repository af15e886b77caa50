"""Reading inputs of any length at constant memory: chunked prefill, then decoding with the fixed cache.

`prefill` feeds the input in segments of B tokens through a compressing cache. Segment boundaries are
anchored at the *end* of the input, so in a left-padded batch every row is cut exactly as it would be
alone. `generate` prefills everything but the last prompt token that way and hands over to transformers'
own ``model.generate`` (all the usual generation arguments work), which decodes with the same cache.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .attention import enable_scoring
from .cache import CompressedCache
from .errors import ConfigError
from .models_support import layout_for_policy
from .policies import Policy, make_policy
from .positions import resolve_positions

DEFAULT_SEGMENT_SIZE = 512
"""B when nothing else says: the paper's segment length."""


def make_cache(
    model: nn.Module,
    policy: str | Policy = "lococo",
    *,
    prefill_chunk_size: int | str | None = "auto",
    reindex_positions: bool | None = None,
    positions: str | None = None,
    score_kernel: str = "blockwise",
    **policy_kwargs,
) -> CompressedCache:
    """A fresh compressing cache for ``model`` under ``policy`` (a name or a :class:`Policy`).

    Also switches the model to LoCoCo's score-collecting attention function (idempotent; the outputs of
    the attention itself do not change). ``policy="lococo"`` uses the heads attached to the model. A model the
    policy cannot run on is refused with the reason and the policies that work on it
    (:func:`lococo.models_support.layout_for_policy`): ``full`` runs on any model built on transformers'
    ``DynamicCache`` layers, the policies that need no scores on most, score-based ones where LoCoCo's
    attention function sees the scores.

    So that a plain ``model.generate(long_prompt, past_key_values=cache)`` reads the prompt in segments
    (memory O(M + B), as :func:`prefill`) instead of one forward over the whole prompt, the model's
    ``generation_config.prefill_chunk_size`` (transformers' own chunked prefill) is set when it has none:
    to ``prefill_chunk_size``, where ``"auto"`` means the heads' ``segment_size`` for LoCoCo, else 512.
    ``None`` leaves the generation config alone.

    ``reindex_positions=True`` gives the kept slots positions counted inside the cache (StreamingLLM's scheme,
    for any policy on a rotary model; :mod:`lococo.positions`): at every compression they move to the
    positions right before the incoming tokens, so no query-key distance exceeds the slots stored. ``False``
    keeps absolute positions; ``None`` (default) takes the policy's default (``Policy.default_positions``) where
    the model allows moving keys, absolute positions elsewhere. ``positions`` names the scheme instead
    ("absolute", "reindexed", or "clamped": absolute positions until a slot falls farther back than the
    model's context length, then moved to that distance; :mod:`lococo.positions`); give one of the two.

    ``score_kernel="flex"`` computes the attention scores with two ``flex_attention`` passes that never hold the
    probability matrix (:mod:`lococo.flex_scores`; compiled on a GPU, unfused and slower on a CPU); the
    default ``"blockwise"`` holds one block of it at a time.
    """
    enable_scoring(model)
    if isinstance(policy, str):
        policy = make_policy(policy, model=model, **policy_kwargs)
    elif policy_kwargs:
        raise ConfigError("pass policy settings either in the Policy object or as keyword arguments, not both")
    if positions is not None and reindex_positions is not None:
        raise ConfigError("give positions or reindex_positions, not both")
    scheme = resolve_positions(model, policy, positions if positions is not None else reindex_positions)
    layout_for_policy(model, policy, scheme != "absolute")  # refused with the reason before the config changes
    _chunk_generate_prefill(model, policy, prefill_chunk_size)
    return CompressedCache(model, policy, positions=scheme, score_kernel=score_kernel)


def _chunk_generate_prefill(model: nn.Module, policy: Policy, chunk: int | str | None) -> None:
    config = getattr(model, "generation_config", None)
    if chunk is None or config is None or getattr(config, "prefill_chunk_size", None) is not None:
        return
    if chunk == "auto":
        heads = getattr(policy, "heads", None)
        chunk = heads.config.segment_size if heads is not None else DEFAULT_SEGMENT_SIZE
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ConfigError(f"prefill_chunk_size must be a positive integer, 'auto' or None, got {chunk!r}")
    config.prefill_chunk_size = chunk


def segment_bounds(length: int, segment_size: int) -> list[tuple[int, int]]:
    """Segments of ``segment_size`` tokens anchored at the end: the first one takes the remainder."""
    if segment_size < 1:
        raise ConfigError(f"segment_size must be >= 1, got {segment_size}")
    bounds = []
    stop = length
    while stop > 0:
        start = max(0, stop - segment_size)
        bounds.append((start, stop))
        stop = start
    return bounds[::-1]


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Absolute positions that start at 0 on each row's first real token (left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass
class PrefillOutput:
    cache: CompressedCache
    logits: torch.Tensor | None  # logits of the last position, [batch, vocab]


def _check_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    if input_ids.dim() != 2:
        raise ConfigError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
    if attention_mask is None:
        return torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ConfigError(
            f"attention_mask shape {tuple(attention_mask.shape)} does not match input_ids {tuple(input_ids.shape)}"
        )
    if bool((attention_mask[:, -1] == 0).any()):
        raise ConfigError("right padding is not supported: pad on the left (tokenizer.padding_side = 'left')")
    return attention_mask


def iter_segments(
    model: nn.Module,
    input_ids: torch.Tensor,
    cache: CompressedCache,
    segment_size: int,
    *,
    attention_mask: torch.Tensor | None = None,
    logits_to_keep: int = 0,
    grad: bool | Sequence[bool] = False,
    progress: bool = False,
    desc: str = "segments",
) -> Iterator[tuple[int, int, Any]]:
    """The one segment loop: feed the new tokens ``input_ids [batch, n]`` through ``cache`` segment by segment.

    Segments are anchored at the *end* (:func:`segment_bounds`: the first one takes the remainder), so a
    left-padded row is cut as it would be alone. ``attention_mask`` covers the tokens the cache has already
    seen plus the new ones (``[batch, seen + n]``, left padding only; None = every token is real); positions
    come from it. ``grad`` (one flag, or one per segment) says which forwards keep their graph.
    Yields ``(start, stop, output)`` for each segment, ``start``/``stop`` indexing ``input_ids``; prefill,
    perplexity, the benchmarks and the training loss all read text through this loop.
    """
    seen = cache.get_seq_length()
    n = input_ids.shape[1]
    if attention_mask is None:
        attention_mask = torch.ones(input_ids.shape[0], seen + n, dtype=torch.long)
    elif attention_mask.shape != (input_ids.shape[0], seen + n):
        raise ConfigError(
            f"attention_mask must cover the {seen} tokens already in the cache plus the {n} new ones: expected "
            f"shape {(input_ids.shape[0], seen + n)}, got {tuple(attention_mask.shape)}"
        )
    positions = position_ids_from_mask(attention_mask)[:, seen:]
    bounds = segment_bounds(n, segment_size)
    flags = [grad] * len(bounds) if isinstance(grad, bool) else list(grad)
    if len(flags) != len(bounds):
        raise ConfigError(f"grad has {len(flags)} flags for {len(bounds)} segments")
    device = next(model.parameters()).device
    bar = tqdm(total=n, unit="tok", desc=desc, disable=not progress, leave=False)
    try:
        for (start, stop), keep_graph in zip(bounds, flags, strict=True):
            with nullcontext() if keep_graph else torch.no_grad():
                out = model(
                    input_ids=input_ids[:, start:stop].to(device),
                    attention_mask=attention_mask[:, : seen + stop].to(device),
                    position_ids=positions[:, start:stop].to(device),
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=logits_to_keep,
                )
            bar.update(stop - start)
            yield start, stop, out
    finally:
        bar.close()


def prefill(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    cache: CompressedCache | None = None,
    *,
    segment_size: int = 512,
    policy: str | Policy = "lococo",
    progress: bool = False,
    grad: bool = False,
) -> PrefillOutput:
    """Read ``input_ids [batch, N]`` in segments through ``cache`` (created from ``policy`` if None).

    If the cache has already seen the first ``seen`` tokens of ``input_ids`` (and ``attention_mask``), only
    the rest is read. Memory is O(mem_size + segment_size) whatever N is. Returns the cache and the last
    position's logits.
    """
    attention_mask = _check_inputs(input_ids, attention_mask)
    cache = cache if cache is not None else make_cache(model, policy)
    seen = cache.get_seq_length()
    logits = None
    for _, _, out in iter_segments(model, input_ids[:, seen:], cache, segment_size, attention_mask=attention_mask,
                                   logits_to_keep=1, grad=grad, progress=progress, desc="prefill"):
        logits = out.logits[:, -1]
    return PrefillOutput(cache=cache, logits=logits)


def generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    cache: CompressedCache | None = None,
    policy: str | Policy = "lococo",
    segment_size: int = 512,
    progress: bool = False,
    **generate_kwargs,
) -> torch.Tensor:
    """``model.generate`` on a prompt of any length with a fixed-size cache.

    The prompt (all but its last token) is read in segments of ``segment_size``; then transformers'
    ``generate`` continues with the same cache, so every generation argument (``max_new_tokens``,
    ``do_sample``, ``temperature``, stopping criteria, streamers, ...) works as usual.
    Returns the full sequences (prompt + new tokens), as ``model.generate`` does.
    """
    attention_mask = _check_inputs(input_ids, attention_mask)
    cache = cache if cache is not None else make_cache(model, policy)
    if input_ids.shape[1] > 1:
        prefill(model, input_ids[:, :-1], attention_mask[:, :-1], cache, segment_size=segment_size, progress=progress)
    device = next(model.parameters()).device
    generate_kwargs.setdefault("use_cache", True)  # a model whose config says use_cache=False (MPT) would re-read all
    return model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        past_key_values=cache,
        **generate_kwargs,
    )
