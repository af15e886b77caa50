"""``lococo generate``: read a prompt file of any length with a fixed-size cache, then continue it."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HELP = "generate a continuation of a long prompt with a fixed-size cache"


def add_policy_args(parser: argparse.ArgumentParser, *, many: bool = False) -> None:
    """``--policy``, ``--mem-size``, ``--segment-size``, ``--heads`` (shared by generate and demo)."""
    nargs = "+" if many else None
    parser.add_argument("--policy", default="lococo", nargs=nargs, help="cache policy (see docs/policies.md)")
    parser.add_argument("--mem-size", type=int, default=None, nargs=nargs,
                        help="memory slots per layer (M; default 128, or the M of --heads)")
    parser.add_argument("--segment-size", type=int, default=512, help="prefill segment length (B)")
    parser.add_argument("--heads", default=None, help="folder with trained LoCoCo heads (default: shipped heads "
                        "for the reference model if they match --mem-size, else untrained heads)")


def prepare_cache(model, policy: str, mem_size: int | None, segment_size: int, heads: str | None):
    """A fresh cache for ``policy`` with the settings it takes (:func:`lococo.policies.policy_settings`).

    ``mem_size=None``: the policy's default M (128), or for LoCoCo the M of its heads: ``heads`` if given,
    else those attached, else the ones shipped for this model (M = 128), else fresh ones. Heads whose M
    differs from an explicit ``mem_size`` are refused (never a silent choice).
    """
    from ..generation import make_cache
    from ..policies import policy_settings

    return make_cache(model, policy, **policy_settings(policy, mem_size=mem_size, heads=heads or "auto",
                                                       segment_size=segment_size))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .cli import add_model_args

    add_model_args(parser, extension=True)
    parser.add_argument("--prompt-file", type=Path, required=True, help="text file with the prompt ('-' = stdin)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument("--temperature", type=float, default=0.7)
    add_policy_args(parser)


def run(args: argparse.Namespace) -> int:
    from ..errors import LococoError
    from ..generation import generate
    from .cli import load_model_from_args

    if str(args.prompt_file) == "-":
        text = sys.stdin.read()
    elif not args.prompt_file.is_file():
        raise LococoError(f"prompt file {args.prompt_file} does not exist")
    else:
        text = args.prompt_file.read_text(encoding="utf-8", errors="replace")
    model, tokenizer = load_model_from_args(args)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    if ids.shape[1] == 0:
        raise LococoError(f"prompt file {args.prompt_file} is empty")
    cache = prepare_cache(model, args.policy, args.mem_size, args.segment_size, args.heads)
    kwargs = dict(max_new_tokens=args.max_new_tokens, pad_token_id=tokenizer.pad_token_id)
    kwargs.update(dict(do_sample=True, temperature=args.temperature) if args.sample else dict(do_sample=False))
    t0 = time.perf_counter()
    out = generate(model, ids, cache=cache, segment_size=args.segment_size, progress=True, **kwargs)
    seconds = time.perf_counter() - t0
    print(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    print(
        f"[{ids.shape[1]} prompt tokens, {out.shape[1] - ids.shape[1]} new, {cache.stored_length()} slots stored "
        f"per layer, {cache.cache_bytes() / 2**20:.1f} MiB cache, {seconds:.1f} s]",
        file=sys.stderr,
    )
    return 0
