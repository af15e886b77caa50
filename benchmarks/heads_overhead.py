"""The LoCoCo heads' overhead per segment, against a plain window cache of the same size, in one process.

Both caches read the same held-out tokens in segments of B; runs alternate (window, lococo, window, ...)
so machine noise hits both alike, and the median steady-state segment time (cache full) is compared.
A profiled LoCoCo run splits its time into scores, compaction (of which the conv) and the rest.

    python benchmarks/heads_overhead.py --mem-size 128 512 --tokens 4096 --repeats 3 --threads 1
    python benchmarks/heads_overhead.py --mem-size 128 --head-dtype bfloat16 \
        --output benchmarks/results/heads_overhead_bf16.json
    python benchmarks/heads_overhead.py --heads shipped --output benchmarks/results/heads_overhead_shipped.json
    python benchmarks/heads_overhead.py --heads shipped \
        --output benchmarks/results/heads_overhead_shipped_avx2.json   # on a CPU without native bf16

Cheaper conv architectures (fresh heads, every layer mixing; LoCoCoConfig.bottleneck / separable):

    python benchmarks/heads_overhead.py --output benchmarks/results/heads_overhead_conv_full.json
    python benchmarks/heads_overhead.py --bottleneck 32 --output benchmarks/results/heads_overhead_conv_bottleneck32.json
    python benchmarks/heads_overhead.py --separable --output benchmarks/results/heads_overhead_conv_separable.json

``--heads fresh`` (default) times untrained heads of the default config; ``--heads shipped`` the heads shipped
for the reference model (their own config: score mode, lambda per layer), cast to ``--head-dtype``:

    python benchmarks/heads_overhead.py --heads shipped --head-dtype bfloat16 \
        --output benchmarks/results/heads_overhead_shipped_bf16.json

``--baselines window tova snapkv`` times those policies at the same M in the same alternation (the first one
is the ``overhead`` reference), and ``--decode-tokens N`` then also feeds the next N tokens one at a time after
each read, as decoding does (compressions every buffer + 1 tokens included), and compares tokens/s:

    python benchmarks/heads_overhead.py --heads shipped --baselines window tova --tokens 32768 --decode-tokens 64 \
        --output benchmarks/results/speed_vs_tova_32k.json

Spread: the ratio is also computed within each repeat (medians of that repeat), and its range over repeats is
reported beside the pooled median.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from tqdm.auto import tqdm

import lococo
from lococo.data import long_text_ids
from lococo.evaluation.bench import segment_times
from lococo.evaluation.report import run_meta, write_report
from lococo.generation import segment_bounds


def read(model, ids, cache, segment_size: int) -> list[float]:
    with torch.no_grad():
        times, _ = segment_times(model, ids, cache, segment_size)
    return times[2:]  # from the third segment on, every segment compresses M + B -> M


def profile_breakdown(model, ids, segment_size: int) -> dict:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        read(model, ids, lococo.make_cache(model, "lococo"), segment_size)
    totals = {e.key: e.cpu_time_total / 1e6 for e in prof.key_averages() if e.key.startswith("lococo.")}
    return {k: round(v, 3) for k, v in sorted(totals.items())}


def decode_rate(model, ids, cache) -> float:
    """Tokens per second feeding ``ids`` one at a time through ``cache`` (decoding's compressions included)."""
    with torch.no_grad():
        times, _ = segment_times(model, ids, cache, 1)
    return len(times) / sum(times)


def _spread(values: list[float]) -> str:
    return f"{min(values):.3f}..{max(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mem-size", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--segment-size", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--head-dtype", default="float32", help="dtype of the heads (the conv runs in it)")
    parser.add_argument("--heads", choices=["fresh", "shipped"], default="fresh")
    parser.add_argument("--bottleneck", type=int, default=0,
                        help="fresh heads: LoCoCoConfig.bottleneck (1x1 projection to this many channels first)")
    parser.add_argument("--separable", action="store_true", help="fresh heads: LoCoCoConfig.separable (depthwise + 1x1)")
    parser.add_argument("--baselines", nargs="+", default=["window"],
                        help="policies timed beside LoCoCo at the same M (default window; the first is the "
                        "reference of 'overhead')")
    parser.add_argument("--decode-tokens", type=int, default=0,
                        help="after each read, time this many tokens fed one at a time (default 0: none)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/heads_overhead.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = lococo.load_model()
    ids = long_text_ids(tokenizer, args.tokens + args.decode_tokens)
    prompt, following = ids[:, : args.tokens], ids[:, args.tokens :]
    policies = [*dict.fromkeys(args.baselines), "lococo"]
    records = []
    for mem in args.mem_size:
        if args.heads == "shipped":
            lococo.load_heads(model, lococo.shipped_heads(model, mem)).to(getattr(torch, args.head_dtype))
        else:
            lococo.attach(model, lococo.LoCoCoConfig(mem_size=mem, segment_size=args.segment_size,
                                                     head_dtype=args.head_dtype, bottleneck=args.bottleneck,
                                                     separable=args.separable))

        def new_cache(policy: str, mem: int = mem):
            return lococo.make_cache(model, policy, **({} if policy == "lococo" else {"mem_size": mem}))

        runs: dict[str, list[list[float]]] = {p: [] for p in policies}
        rates: dict[str, list[float]] = {p: [] for p in policies}
        read(model, prompt[:, : 2 * args.segment_size], new_cache("window"), args.segment_size)  # warm-up
        for _ in tqdm(range(args.repeats), desc=f"M={mem}", unit="repeat"):
            for policy in policies:
                cache = new_cache(policy)
                runs[policy].append(read(model, prompt, cache, args.segment_size))
                if args.decode_tokens:
                    rates[policy].append(decode_rate(model, following, cache))
        median = {p: statistics.median(t for run in runs[p] for t in run) for p in policies}
        breakdown = profile_breakdown(model, prompt, args.segment_size)
        segments = len(segment_bounds(args.tokens, args.segment_size)) - 2
        record = {
            "policy": "lococo", "heads": args.heads, "mem_size": mem, "head_dtype": args.head_dtype,
            "conv": ("full" if args.heads == "shipped" else
                     f"{'separable' if args.separable else 'full'}, bottleneck {args.bottleneck or 'none'}"),
            "segment_size": args.segment_size, "length": args.tokens,
            **{f"{p}_segment_s": median[p] for p in policies},
            "overhead": median["lococo"] / median[policies[0]] - 1,
        }
        for p in policies[:-1]:
            per_repeat = [statistics.median(lo) / statistics.median(base) - 1
                          for lo, base in zip(runs["lococo"], runs[p], strict=True)]
            record |= {f"overhead_vs_{p}": median["lococo"] / median[p] - 1,
                       f"overhead_vs_{p}_per_repeat": _spread(per_repeat)}
        if args.decode_tokens:
            record |= {f"{p}_decode_tok_s": statistics.median(rates[p]) for p in policies}
            for p in policies[:-1]:
                record |= {f"decode_speed_vs_{p}": statistics.median(rates["lococo"]) / statistics.median(rates[p]),
                           f"decode_speed_vs_{p}_per_repeat": _spread(
                               [lo / base for lo, base in zip(rates["lococo"], rates[p], strict=True)])}
        record |= {"segments_timed": sum(len(run) for run in runs["lococo"]),
                   "profile_s_per_segment": {k: round(v / segments, 4) for k, v in breakdown.items()}}
        records.append(record)
        print(json.dumps(records[-1]))
        lococo.detach(model)
    write_report(args.output, run_meta("heads_overhead", vars(args) | {"output": str(args.output)}), records)


if __name__ == "__main__":
    main()
