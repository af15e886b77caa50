"""The LoCoCo heads' overhead per segment, against a plain window cache of the same size, in one process.

Both caches read the same held-out tokens in segments of B; runs alternate (window, lococo, window, ...)
so machine noise hits both alike, and the median steady-state segment time (cache full) is compared.
A profiled LoCoCo run splits its time into scores, compaction (of which the conv) and the rest.

    python benchmarks/heads_overhead.py --mem-size 128 512 --tokens 4096 --repeats 3 --threads 1
    python benchmarks/heads_overhead.py --mem-size 128 --head-dtype bfloat16 \
        --output benchmarks/results/heads_overhead_bf16.json
    python benchmarks/heads_overhead.py --heads shipped --output benchmarks/results/heads_overhead_shipped.json

``--heads fresh`` (default) times untrained heads of the default config; ``--heads shipped`` the heads shipped
for the reference model (their own config: score mode, lambda per layer; ``--head-dtype`` is then ignored).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mem-size", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--segment-size", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--head-dtype", default="float32", help="dtype of the heads (the conv runs in it)")
    parser.add_argument("--heads", choices=["fresh", "shipped"], default="fresh")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/heads_overhead.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = lococo.load_model()
    ids = long_text_ids(tokenizer, args.tokens)
    records = []
    for mem in args.mem_size:
        if args.heads == "shipped":
            lococo.load_heads(model, lococo.shipped_heads(model, mem))
        else:
            lococo.attach(model, lococo.LoCoCoConfig(mem_size=mem, segment_size=args.segment_size,
                                                     head_dtype=args.head_dtype))
        times: dict[str, list[float]] = {"window": [], "lococo": []}
        read(model, ids[:, : 2 * args.segment_size], lococo.make_cache(model, "window", mem_size=mem), args.segment_size)
        for _ in range(args.repeats):
            for policy in ("window", "lococo"):
                kwargs = {"mem_size": mem} if policy == "window" else {}
                times[policy] += read(model, ids, lococo.make_cache(model, policy, **kwargs), args.segment_size)
        window, lococo_s = statistics.median(times["window"]), statistics.median(times["lococo"])
        breakdown = profile_breakdown(model, ids, args.segment_size)
        segments = len(segment_bounds(args.tokens, args.segment_size)) - 2
        records.append({
            "policy": "lococo", "heads": args.heads, "mem_size": mem, "head_dtype": args.head_dtype, "segment_size": args.segment_size, "length": args.tokens,
            "window_segment_s": window, "lococo_segment_s": lococo_s, "overhead": lococo_s / window - 1,
            "segments_timed": len(times["lococo"]),
            "profile_s_per_segment": {k: round(v / segments, 4) for k, v in breakdown.items()},
        })
        print(json.dumps(records[-1]))
        lococo.detach(model)
    write_report(args.output, run_meta("heads_overhead", vars(args) | {"output": str(args.output)}), records)


if __name__ == "__main__":
    main()
