"""The decoding buffer: decode fidelity and decoding speed against how often decoding compresses (issue 15).

    python reports/buffer/run_buffer.py            # every cell, resumable; writes buffer.md beside results.jsonl

While decoding, a cache of M slots compresses once it holds more than M + buffer, that is every buffer + 1
tokens, with one query's scores. A larger buffer compresses less often (cheaper, and fewer one-query folds) but
holds more slots at its peak. So each cell is read at its peak slot count too: TOVA with M = 128 and buffer 64
holds 192 slots at most, as TOVA with M = 176 and buffer 16 does, which spends the same memory on kept slots.

Cells: TOVA (M = 128: buffer 16, 64; M = 176: buffer 16) and the shipped M = 128 LoCoCo heads (buffer 16, 64).
Each reads the held-out 8K sequences of reports/decode_grid.json (the first ``--docs`` documents), the last 256
tokens fed one at a time against the same tokens read as one segment (``lococo.evaluation.decode``), fp32, one
thread; decode tokens/s is the one-at-a-time pass. Paired differences of the log decode/segment ratio are against
the same policy with buffer 16.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import lococo
from lococo.data import load_texts, tokenize_documents
from lococo.evaluation.decode import decode_fidelity
from lococo.evaluation.perplexity import eval_sequences
from lococo.evaluation.stats import paired_difference

HERE = Path(__file__).parent
CELLS = [("tova", 128, 16), ("tova", 128, 64), ("lococo", 128, 64), ("lococo", 128, 16), ("tova", 176, 16)]


def new_cache_factory(model, policy: str, mem: int, buffer: int):
    if policy == "lococo":
        lococo.load_heads(model, lococo.shipped_heads(model, mem), replace=True)
        lococo.get_heads(model).config.buffer = buffer  # the heads own the buffer; decoding reads it from them
        return lambda: lococo.make_cache(model, "lococo")
    return lambda: lococo.make_cache(model, policy, mem_size=mem, buffer=buffer)


def summarize(records: list[dict], path: Path) -> None:
    lines = ["# Decoding buffer: fidelity and speed (issue 15, item 3)", "",
             __doc__.split("\n\n", 2)[2].replace("\n", " ").strip(), "",
             "| policy | M | buffer | peak slots | decode/segment [95%] | Δ log ratio vs buffer 16 (nats) | "
             "decode ppl | decode tok/s | docs |", "|---|---|---|---|---|---|---|---|---|"]
    base = {(r["policy"], r["mem_size"]): r for r in records if r["buffer"] == 16}
    for r in records:
        ref = base.get((r["policy"], r["mem_size"])) if r["buffer"] != 16 else None
        if r["policy"] == "tova" and r["mem_size"] != 128:
            ref = base.get(("tova", 128))
        diff = ""
        if ref is not None:
            mine = [d - s for d, s in zip(r["doc_decode_nll"], r["doc_segment_nll"], strict=True)]
            theirs = [d - s for d, s in zip(ref["doc_decode_nll"], ref["doc_segment_nll"], strict=True)]
            mean, low, high = paired_difference(mine, theirs)
            diff = f"{mean:+.4f} [{low:+.4f}, {high:+.4f}] (vs M = {ref['mem_size']}, buffer 16)"
        lines.append(f"| {r['policy']} | {r['mem_size']} | {r['buffer']} | {r['mem_size'] + r['buffer']} | "
                     f"{r['decode_ratio']:.3f} [{r['decode_ratio_low']:.3f}, {r['decode_ratio_high']:.3f}] | {diff} | "
                     f"{r['decode_ppl']:.2f} | {r['decode_tok_s']:.1f} | {r['docs']} |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=4)
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--decode-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=HERE / "results.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = lococo.load_model()
    docs = tokenize_documents(load_texts("bundled:narrative:heldout"), tokenizer)
    sequences = eval_sequences(docs, args.length, args.docs)
    done = [json.loads(line) for line in args.output.read_text().splitlines()] if args.output.exists() else []
    for policy, mem, buffer in CELLS:
        if any((r["policy"], r["mem_size"], r["buffer"]) == (policy, mem, buffer) for r in done):
            continue
        print(f"buffer: {policy} M = {mem} buffer = {buffer}", flush=True)
        result = decode_fidelity(model, sequences, new_cache_factory(model, policy, mem, buffer), 512,
                                 args.decode_tokens, progress=False)
        record = {"policy": policy, "mem_size": mem, "buffer": buffer, "length": args.length, **result}
        with args.output.open("a") as f:
            f.write(json.dumps(record) + "\n")
        done.append(record)
        summarize(done, args.output.with_name("buffer.md"))
    summarize(done, args.output.with_name("buffer.md"))


if __name__ == "__main__":
    main()
