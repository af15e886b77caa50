"""``lococo demo``: read a long held-out text through a fixed-size cache, then generate greedily.

Placeholder: the cache is a plain sliding window (:class:`transformers.DynamicSlidingWindowLayer`, 640
tokens per layer); the learned LoCoCo cache will replace :func:`_make_cache`. Because a compressing cache
stores fewer tokens than it has seen, position ids are always passed explicitly (absolute token index).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import Cache, DynamicSlidingWindowLayer

from lococo.data import long_text_ids
from lococo.errors import ConfigError
from lococo.models import load_model

SEGMENT = 512
WINDOW = 640


def _make_cache(model: PreTrainedModel) -> Cache:
    """A fixed-size cache: every layer keeps only the last ``WINDOW`` tokens."""
    cache = DynamicCache(config=model.config)
    cache.layers = [DynamicSlidingWindowLayer(sliding_window=WINDOW) for _ in cache.layers]
    return cache


def _forward(model: PreTrainedModel, ids: torch.Tensor, cache: Cache, start: int) -> torch.Tensor:
    """Run ``ids`` (positions ``start ...``) through the model; returns the last position's logits."""
    positions = torch.arange(start, start + ids.shape[1]).unsqueeze(0)
    out = model(
        input_ids=ids, position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=1
    )
    return out.logits[:, -1]


def _cache_bytes(cache: Cache) -> tuple[int, list[int]]:
    """Bytes held by the cache and the stored length of each layer."""
    total, lengths = 0, []
    for layer in cache.layers:
        total += (
            layer.keys.numel() * layer.keys.element_size()
            + layer.values.numel() * layer.values.element_size()
        )
        lengths.append(layer.keys.shape[-2])
    return total, lengths


def _full_cache_bytes(model: PreTrainedModel, tokens: int) -> int:
    """Bytes a full (uncompressed) KV cache would need for ``tokens`` tokens."""
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    itemsize = torch.finfo(model.dtype).bits // 8
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * tokens * itemsize


def _peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


@torch.inference_mode()
def main(args: argparse.Namespace) -> int:
    """Run the demo; prints statistics and the continuation. Returns 0."""
    n_tokens = getattr(args, "tokens", 16384)
    new_tokens = getattr(args, "new_tokens", 40)
    if n_tokens < 1 or new_tokens < 0:
        raise ConfigError("--tokens must be >= 1 and --new-tokens >= 0")
    model, tokenizer = load_model()
    ids = long_text_ids(tokenizer, n_tokens)
    cache = _make_cache(model)

    start = time.perf_counter()
    for pos in tqdm(range(0, n_tokens, SEGMENT), desc="reading", unit="segment"):
        logits = _forward(model, ids[:, pos : pos + SEGMENT], cache, pos)
    read_s = time.perf_counter() - start

    start, generated = time.perf_counter(), []
    for step in range(new_tokens):
        token = logits.argmax(-1, keepdim=True)
        generated.append(int(token))
        if int(token) == tokenizer.eos_token_id:
            break
        logits = _forward(model, token, cache, n_tokens + step)
    gen_s = time.perf_counter() - start

    held, lengths = _cache_bytes(cache)
    full = _full_cache_bytes(model, n_tokens + len(generated))
    print(f"tokens read:           {n_tokens} in {read_s:.1f} s ({n_tokens / read_s:.0f} tokens/s)")
    print(f"tokens generated:      {len(generated)} in {gen_s:.1f} s ({len(generated) / gen_s:.1f} tokens/s)")
    print(f"tokens seen by cache:  {cache.get_seq_length()}")
    print(f"cache slots per layer: {sorted(set(lengths))} ({len(lengths)} layers)")
    print(f"cache memory:          {held / 2**20:.1f} MiB (a full cache would need {full / 2**20:.1f} MiB)")
    print(f"peak RSS:              {_peak_rss_mib():.0f} MiB")
    print(f"continuation:          {tokenizer.decode(generated)!r}")
    return 0
