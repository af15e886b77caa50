"""The two ways of computing attention scores side by side: blockwise probabilities vs two flex_attention passes.

    python benchmarks/score_kernel.py --device cuda --tokens 8192 --mem-size 128 512
    python benchmarks/score_kernel.py --tokens 2048 --mem-size 128      # CPU: flex runs unfused (a check only)

Both read the same held-out tokens with the shipped LoCoCo heads (and TOVA), runs alternating; reported per
kernel: median seconds per steady segment, peak accelerator memory (CUDA), and the largest difference of the
last logits and of the kept keys between the two kernels. The first flex call compiles its kernels (on CUDA),
so one warm-up read comes first.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

import lococo
from lococo.evaluation.bench import segment_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--mem-size", type=int, nargs="+", default=[128])
    parser.add_argument("--policies", nargs="+", default=["lococo", "tova"])
    parser.add_argument("--segment-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=None, help="JSON records (default: print only)")
    args = parser.parse_args()
    model, tokenizer = lococo.load_model(dtype=args.dtype)
    model.to(args.device)
    from lococo.data import load_texts, tokenize_documents

    docs = tokenize_documents(load_texts("bundled:narrative:heldout"), tokenizer)
    ids = torch.tensor([t for doc in docs for t in doc][: args.tokens])[None].to(model.device)
    records = []
    for mem in args.mem_size:
        for policy in args.policies:
            kw = {"heads": "shipped"} if policy == "lococo" else {}
            times: dict[str, list[float]] = {"blockwise": [], "flex": []}
            peaks: dict[str, int] = {}
            ends = {}
            for repeat in range(args.repeats + 1):  # the first round warms up (and compiles flex)
                for kernel in times:
                    if args.device.startswith("cuda"):
                        torch.cuda.reset_peak_memory_stats()
                    cache = lococo.make_cache(model, policy, mem_size=mem, score_kernel=kernel, **kw)
                    seg, logits = segment_times(model, ids, cache, args.segment_size)
                    if repeat:
                        times[kernel] += seg[2:]  # steady state: the memory is full
                    if args.device.startswith("cuda"):
                        peaks[kernel] = torch.cuda.max_memory_allocated()
                    ends[kernel] = (logits.float(), [layer.keys.float() for layer in cache.compressed_layers])
            (l_blk, k_blk), (l_flex, k_flex) = ends["blockwise"], ends["flex"]
            record = {
                "policy": policy, "mem_size": mem, "tokens": args.tokens, "device": args.device, "dtype": args.dtype,
                **{f"{k}_segment_s": statistics.median(v) for k, v in times.items()},
                **{f"{k}_peak_mib": v / 2**20 for k, v in peaks.items()},
                "max_logit_diff": float((l_blk - l_flex).abs().max()),
                "max_key_diff": max(float((a - b).abs().max()) for a, b in zip(k_blk, k_flex, strict=True)),
            }
            record["flex_speed_vs_blockwise"] = record["blockwise_segment_s"] / record["flex_segment_s"]
            print(json.dumps(record))
            records.append(record)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({"config": vars(args) | {"output": str(args.output)},
                                           "records": records}, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
