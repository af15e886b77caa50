"""``lococo demo``: what a fixed-size cache saves and what it loses, on one long held-out text.

The same text is read under several policies (default: the full cache, a plain window, StreamingLLM, TOVA
and LoCoCo at the same M), each in its own process so that its peak RSS is its own
(:func:`lococo.evaluation.bench.run_in_subprocess`). For each: the slots a layer holds, the cache's MiB
(measured from its tensors), peak RSS, tokens/s reading and decoding, and the perplexity of the text that
follows (the quality of what the cache kept). Then LoCoCo (the learned policy, if compared) continues the text (sampled), and a line says where
the full reports are. The full cache is left out, with the memory it would need, when that exceeds
``--full-max-mib``.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from ..errors import ConfigError

DEFAULT_POLICIES = ["full", "window", "streaming", "tova", "lococo"]
SAMPLING = {"temperature": 0.7, "top_p": 0.9, "repetition_penalty": 1.1}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    text = parser.add_argument_group("text")
    text.add_argument("--tokens", type=int, default=12288, help="tokens to read (default 12288, 1.5x the reference "
                      "model's 8K context; the full cache's cell, the slowest, keeps the demo under 5 minutes on 2 cores)")
    text.add_argument("--score-tokens", type=int, default=512,
                      help="tokens after them whose perplexity measures what each cache kept (default 512)")
    text.add_argument("--text", type=Path, default=None, metavar="FILE",
                      help="a text file to read instead of the bundled held-out essays and plays")
    pol = parser.add_argument_group("policies")
    pol.add_argument("--policy", nargs="+", default=DEFAULT_POLICIES, help="policies to compare "
                     f"(default: {' '.join(DEFAULT_POLICIES)})")
    pol.add_argument("--mem-size", type=int, default=128, help="memory slots per layer M for every policy (default 128)")
    pol.add_argument("--segment-size", type=int, default=512, help="prefill segment length B (default 512)")
    pol.add_argument("--heads", default=None, help="trained LoCoCo heads (default: the ones shipped for the reference "
                     "model and this M, else untrained heads, said in the table)")
    pol.add_argument("--positions", choices=("absolute", "reindexed", "clamped"), default=None,
                     help="key positions for every compressing policy (see lococo.positions; default: each "
                     "policy's default)")
    pol.add_argument("--full-max-mib", type=float, default=1024.0,
                     help="leave the full cache out when it would need more than this (default 1024 MiB)")
    out = parser.add_argument_group("output")
    out.add_argument("--new-tokens", type=int, default=48, help="tokens of LoCoCo's sampled continuation (default 48)")
    out.add_argument("--decode-tokens", type=int, default=32, help="tokens decoded greedily to time decoding (default 32)")
    out.add_argument("--jobs", type=int, default=None,
                     help="policies measured at once, one process each (default: 2 if there are 2 cores or more)")
    out.add_argument("--plot", type=Path, default=None, metavar="PNG", help="also draw the table as a PNG")
    parser.add_argument("--model", default=None, help="model folder or hub id (default: the reference model)")


def _check(args: argparse.Namespace) -> None:
    from ..policies import policy_names

    if args.tokens < 2 or args.score_tokens < 1 or args.new_tokens < 0 or args.decode_tokens < 1:
        raise ConfigError("--tokens must be >= 2, --score-tokens and --decode-tokens >= 1, --new-tokens >= 0")
    unknown = sorted(set(args.policy) - set(policy_names()))
    if unknown:
        raise ConfigError(f"unknown policy {', '.join(unknown)}; choose from {', '.join(policy_names())}")
    if args.text is not None and not args.text.is_file():
        raise ConfigError(f"--text {args.text}: no such file")


def _full_cache_mib(model_name: str | None, tokens: int) -> float:
    """MiB the full cache needs for ``tokens`` (keys and values of every attention layer, from the config)."""
    from transformers import AutoConfig

    from ..models import reference_model_path

    config = AutoConfig.from_pretrained(model_name or str(reference_model_path()))
    config = getattr(config, "text_config", config)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * 4 * tokens / 2**20  # fp32


def _storyteller(policies: list[str]) -> str:
    """The policy whose continuation is shown: the learned one (LoCoCo) if compared, else the last one."""
    from ..policies import policy_class

    return next((p for p in policies if policy_class(p).learned), policies[-1])


def _cells(args: argparse.Namespace, threads: int) -> list[dict]:
    from ..policies import policy_class

    cells = []
    teller = _storyteller(args.policy)
    for policy in dict.fromkeys(args.policy):
        cell = {"policy": policy, "mem_size": args.mem_size, "segment_size": args.segment_size, "length": args.tokens,
                "decode_tokens": args.decode_tokens, "score_tokens": args.score_tokens, "threads": threads,
                "model": args.model, "heads": args.heads or "auto", "positions": args.positions,
                "text_file": str(args.text) if args.text else None}
        if policy == teller and args.new_tokens:
            cell["continuation"] = {"max_new_tokens": args.new_tokens, **SAMPLING}
        cell["compresses"] = policy_class(policy).compresses
        cells.append(cell)
    return cells


def _row(r: dict) -> list[str]:
    label = r["policy"] + (f" ({r['heads']} heads)" if r.get("heads") else "")
    positions = {"reindexed": "re-indexed", "absolute": "absolute", "clamped": "clamped"}.get(r.get("positions"), "-")
    if r.get("skipped"):
        return [label, "-", f"{r['length']:,}", f"needs {r['cache_mib']:.0f}", "-", "-", "-", r["skipped"]]
    return [label, positions, f"{r['stored_slots']:,}", f"{r['cache_bytes'] / 2**20:.1f}", f"{r['peak_rss_mb']:.0f}",
            f"{r['prefill_tokens_per_s']:.0f}", f"{r['decode_tokens_per_s']:.1f}", f"{r['score_ppl']:.2f}"]


HEADER = ["policy", "positions", "slots/layer", "cache MiB", "peak RSS MiB", "read tok/s", "decode tok/s",
          "ppl of next"]


def _table(records: list[dict]) -> str:
    rows = [HEADER, *(_row(r) for r in records)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def _plot(records: list[dict], path: Path, title: str) -> None:
    from ..evaluation.grid import pyplot

    plt = pyplot()
    done = [r for r in records if not r.get("skipped")]
    panels = [("cache_bytes", "cache MiB", 2**20), ("peak_rss_mb", "peak RSS MiB", 1),
              ("prefill_tokens_per_s", "read tokens/s", 1), ("score_ppl", "perplexity of the next tokens", 1)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    for ax, (key, label, scale) in zip(axes, panels, strict=True):
        ax.bar([r["policy"] for r in done], [r[key] / scale for r in done], color="tab:blue")
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", rotation=30, labelsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    """Run the demo: the comparison table, LoCoCo's continuation, where the reports are. Returns 0."""
    from tqdm.auto import tqdm

    from ..evaluation.bench import run_in_subprocess

    _check(args)
    cores = os.cpu_count() or 1
    jobs = args.jobs or (2 if cores >= 2 else 1)
    threads = max(1, cores // jobs)
    full_mib = _full_cache_mib(args.model, args.tokens + args.score_tokens)
    cells, records = [], {}
    for cell in _cells(args, threads):
        if not cell["compresses"] and full_mib > args.full_max_mib:
            records[cell["policy"]] = {**cell, "cache_mib": full_mib,
                                       "skipped": f"> --full-max-mib {args.full_max_mib:.0f}"}
        else:
            cells.append(cell)
    start = time.perf_counter()
    print(f"lococo demo: reading {args.tokens:,} held-out tokens under {len(args.policy)} policies at M = "
          f"{args.mem_size} ({jobs} at a time, {threads} thread(s) each); a few minutes on 2 CPU cores", flush=True)
    with ThreadPoolExecutor(max_workers=jobs) as pool, tqdm(total=len(cells), desc="policies", unit="policy") as bar:
        futures = {pool.submit(run_in_subprocess, cell): cell["policy"] for cell in cells}
        for future in as_completed(futures):  # the bar moves as each policy finishes, whatever the order
            records[futures[future]] = future.result()
            bar.update(1)
    ordered = [records[p] for p in dict.fromkeys(args.policy)]
    text = f"{args.text.name}" if args.text else "held-out essays and plays"
    print(f"\n{args.tokens:,} tokens of {text} read in segments of {args.segment_size}, then the next "
          f"{args.score_tokens} scored (their perplexity: the quality each cache kept; one text, so see the reports "
          f"for intervals), then {args.decode_tokens} decoded.\n")
    print(_table(ordered))
    teller = records[_storyteller(args.policy)]
    if teller.get("continuation") is not None:
        settings = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in SAMPLING.items())
        print(f"\nContinuation by {teller['policy']} (sampled: {settings}):\n  {teller['continuation']!r}")
    if args.plot:
        _plot(ordered, args.plot, f"{args.tokens:,} tokens, M = {args.mem_size}")
        print(f"\nplot: {args.plot}")
    print(f"\nDone in {time.perf_counter() - start:.0f} s. Full reports with many documents and 95% intervals: "
          "reports/ (README 'Results'); rerun them with reports/run_reports.sh.")
    return 0
