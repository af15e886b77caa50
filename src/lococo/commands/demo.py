"""``lococo demo``: read a long held-out text through a fixed-size LoCoCo cache, then generate greedily.

Uses the trained heads shipped for the reference model when there are some for ``--mem-size``, else
fresh (untrained) heads, and says which. Prints what it did: tokens read, slots per layer, the cache's
bytes against what a full cache would need, peak RSS, speeds and the continuation.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

from ..data import long_text_ids
from ..errors import ConfigError
from ..generation import generate, prefill
from ..models import load_model
from .generate import add_policy_args, prepare_cache


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokens", type=int, default=16384, help="held-out tokens to read (default 16384)")
    parser.add_argument("--new-tokens", type=int, default=40, help="tokens to generate (default 40)")
    add_policy_args(parser)


def _peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def run(args: argparse.Namespace) -> int:
    """Run the demo; prints statistics and the continuation. Returns 0."""
    if args.tokens < 2 or args.new_tokens < 0:
        raise ConfigError("--tokens must be >= 2 and --new-tokens >= 0")
    model, tokenizer = load_model()
    ids = long_text_ids(tokenizer, args.tokens)
    cache = prepare_cache(model, args.policy, args.mem_size, args.segment_size, args.heads, args.positions)
    heads_note = ""
    if cache.policy.learned:  # say which heads it reads with
        from ..compressor.heads_io import shipped_heads

        shipped = None if args.heads else shipped_heads(model, cache.policy.mem_size)
        source = args.heads or (shipped and f"trained, shipped with lococo as {shipped.name}")
        heads_note = (f" (heads: {source})" if source else
                      " (heads: UNTRAINED, no shipped heads for this M yet: expect degraded text; "
                      "train some with `lococo train` and pass --heads DIR, or try --policy tova)")

    start = time.perf_counter()
    prefill(model, ids[:, :-1], cache=cache, segment_size=args.segment_size, progress=True)
    read_s = time.perf_counter() - start
    slots = cache.stored_length()
    held = cache.cache_bytes()
    full = held / max(slots, 1) * args.tokens

    start = time.perf_counter()
    out = generate(model, ids, cache=cache, segment_size=args.segment_size, max_new_tokens=args.new_tokens,
                   do_sample=False, pad_token_id=tokenizer.pad_token_id)
    gen_s = time.perf_counter() - start
    new = out[0, ids.shape[1] :]

    mem = f"M = {cache.policy.mem_size}" if cache.policy.compresses else "all tokens"
    print(f"policy:                {args.policy}, {mem}, B = {args.segment_size}{heads_note}")
    print(f"tokens read:           {args.tokens} in {read_s:.1f} s ({args.tokens / read_s:.0f} tokens/s)")
    print(f"tokens generated:      {len(new)} in {gen_s:.1f} s ({len(new) / max(gen_s, 1e-9):.1f} tokens/s)")
    print(f"tokens seen by cache:  {cache.get_seq_length()}")
    print(f"cache slots per layer: {slots} after reading, {cache.stored_length()} now "
          f"({len(cache.compressed_layers)} layers)")
    print(f"cache memory:          {held / 2**20:.1f} MiB after reading "
          f"(a full cache would need {full / 2**20:.1f} MiB for {args.tokens} tokens)")
    print(f"peak RSS:              {_peak_rss_mib():.0f} MiB")
    print(f"continuation:          {tokenizer.decode(new, skip_special_tokens=True)!r}")
    return 0

