"""``lococo generate``: read a prompt of any length with a fixed-size cache, then continue it."""

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
    parser.add_argument("--positions", choices=("absolute", "reindexed", "clamped"), default=None,
                        help="key positions: absolute (as the full cache), reindexed: kept slots moved next to "
                        "the incoming tokens (StreamingLLM's scheme; rotary models), or clamped: absolute until a "
                        "slot falls farther back than the model's context length, then moved to that distance "
                        "(default: the policy's default)")


def prepare_cache(model, policy: str, mem_size: int | None, segment_size: int, heads: str | None,
                  positions: str | None = None):
    """A fresh cache for ``policy`` with the settings it takes (:func:`lococo.policies.policy_settings`).

    ``mem_size=None``: the policy's default M (128), or for LoCoCo the M of its heads: ``heads`` if given,
    else those attached, else the ones shipped for this model (M = 128), else fresh ones. Heads whose M
    differs from an explicit ``mem_size`` are refused (never a silent choice). ``positions`` ("absolute",
    "reindexed", "clamped", None for the policy's default): :func:`lococo.make_cache`'s ``positions``.
    """
    from ..generation import make_cache
    from ..policies import policy_settings

    settings = policy_settings(policy, mem_size=mem_size, heads=heads or "auto", segment_size=segment_size)
    return make_cache(model, policy, positions=positions, **settings)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .cli import add_model_args

    add_model_args(parser, extension=True)
    prompt = parser.add_argument_group("prompt (exactly one: --prompt-file, --prompt, or text piped on stdin)")
    prompt.add_argument("--prompt-file", type=Path, default=None, metavar="FILE", help="text file with the prompt ('-' = stdin)")
    prompt.add_argument("--prompt", default=None, metavar="TEXT", help="the prompt itself")
    prompt.add_argument("--chat", action="store_true",
                        help="wrap the prompt as a user turn with the tokenizer's chat template (instruct models)")
    out = parser.add_argument_group("output")
    out.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                     help="print tokens as they are generated (default: when stdout is a terminal)")
    out.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                     help="progress bar with ETA on stderr while the prompt is read (default: on)")
    gen = parser.add_argument_group("decoding")
    gen.add_argument("--max-new-tokens", type=int, default=64, metavar="N")
    gen.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    gen.add_argument("--temperature", type=float, default=0.7, metavar="T", help="sampling temperature (with --sample)")
    gen.add_argument("--top-p", type=float, default=None, metavar="P", help="nucleus sampling: keep the smallest set of tokens "
                     "whose probability reaches P (with --sample; default: the model's generation config)")
    gen.add_argument("--repetition-penalty", type=float, default=None, metavar="R",
                     help="divide the logits of tokens already present by this (> 1 discourages repeats)")
    add_policy_args(parser)


def read_prompt(args: argparse.Namespace) -> tuple[str, str]:
    """``(text, where)`` from exactly one source: ``--prompt-file`` (``-`` = stdin), ``--prompt``, or piped stdin."""
    from ..errors import LococoError

    if args.prompt_file is not None and args.prompt is not None:
        raise LococoError("give the prompt once: --prompt-file or --prompt, not both")
    if args.prompt is not None:
        return args.prompt, "--prompt"
    if args.prompt_file is None and sys.stdin.isatty():
        raise LococoError("no prompt: give --prompt-file FILE, --prompt TEXT, or pipe the prompt on stdin")
    if args.prompt_file is None or str(args.prompt_file) == "-":
        raw = getattr(sys.stdin, "buffer", None)
        return (raw.read().decode("utf-8", errors="replace") if raw is not None else sys.stdin.read()), "stdin"
    if not args.prompt_file.is_file():
        raise LococoError(f"prompt file {args.prompt_file} does not exist")
    return args.prompt_file.read_text(encoding="utf-8", errors="replace"), f"prompt file {args.prompt_file}"


def generation_kwargs(args: argparse.Namespace) -> dict:
    """Keyword arguments for ``generate`` from the decoding options (unset ones are left to the model)."""
    from ..errors import LococoError

    if args.max_new_tokens < 1:
        raise LococoError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    kwargs: dict = dict(max_new_tokens=args.max_new_tokens, do_sample=args.sample)
    if args.sample:
        if args.temperature <= 0:
            raise LococoError(f"--temperature must be > 0, got {args.temperature}")
        kwargs["temperature"] = args.temperature
    if args.top_p is not None:
        if not args.sample:
            raise LococoError("--top-p applies to sampling: add --sample")
        if not 0 < args.top_p <= 1:
            raise LococoError(f"--top-p must be in (0, 1], got {args.top_p}")
        kwargs["top_p"] = args.top_p
    if args.repetition_penalty is not None:
        if args.repetition_penalty <= 0:
            raise LococoError(f"--repetition-penalty must be > 0, got {args.repetition_penalty}")
        kwargs["repetition_penalty"] = args.repetition_penalty
    return kwargs


def chat_prompt(tokenizer, text: str) -> str:
    """``text`` as one user turn under the tokenizer's chat template, ready for the assistant's reply."""
    from ..errors import LococoError

    if not getattr(tokenizer, "chat_template", None):
        raise LococoError("--chat: this model's tokenizer has no chat template; drop --chat to continue the "
                          "prompt as plain text")
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         tokenize=False)


def run(args: argparse.Namespace) -> int:
    from ..errors import LococoError
    from ..generation import generate
    from .cli import load_model_from_args

    text, where = read_prompt(args)
    kwargs = generation_kwargs(args)
    model, tokenizer = load_model_from_args(args)
    if args.chat:
        text = chat_prompt(tokenizer, text)  # the template writes its special tokens itself
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    if ids.shape[1] == 0:
        raise LococoError(f"{where}: the prompt is empty")
    cache = prepare_cache(model, args.policy, args.mem_size, args.segment_size, args.heads, args.positions)
    stream = sys.stdout.isatty() if args.stream is None else args.stream
    if stream:
        from transformers import TextStreamer

        kwargs["streamer"] = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    t0 = time.perf_counter()
    out = generate(model, ids, cache=cache, segment_size=args.segment_size, progress=args.progress,
                   pad_token_id=tokenizer.pad_token_id, **kwargs)
    seconds = time.perf_counter() - t0
    if not stream:  # the streamer has printed the text already, and a final newline
        print(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    print(
        f"[{ids.shape[1]} prompt tokens, {out.shape[1] - ids.shape[1]} new, {cache.stored_length()} slots stored "
        f"per layer, {cache.cache_bytes() / 2**20:.1f} MiB cache, {seconds:.1f} s]",
        file=sys.stderr,
    )
    return 0
