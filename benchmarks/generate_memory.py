"""Peak memory of a plain ``model.generate(long_prompt, past_key_values=lococo_cache)`` against
``lococo.generate`` on the same prompt (issue 19, item 3), each cell in its own process.

Routes:
  lococo.generate   lococo's chunked prefill (segments anchored at the end), then transformers' generate;
  model.generate    transformers' generate with a cache from ``lococo.make_cache`` and nothing else: the
                    cache sets the model's ``prefill_chunk_size`` so the prompt is read in segments;
  full cache        transformers' generate with its own DynamicCache (no lococo), for scale.
Reference model, fp32, shipped M = 128 heads, held-out text, 4 new tokens, one torch thread.

    python benchmarks/generate_memory.py --length 16384 32768 --output benchmarks/results/generate_memory.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROUTES = ("lococo.generate", "model.generate", "full cache")
RESULT = "GENERATE_MEMORY_RESULT "


def run_cell(route: str, length: int, threads: int) -> dict:
    import torch

    import lococo
    from lococo.data import long_text_ids
    from lococo.evaluation.bench import RssSampler

    torch.set_num_threads(threads)
    model, tok = lococo.load_model()
    ids = long_text_ids(tok, length, split="heldout")
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    if route != "full cache":
        lococo.load_heads(model, lococo.shipped_heads(model, 128))
    t0 = time.perf_counter()
    with RssSampler() as rss, torch.no_grad():
        if route == "lococo.generate":
            out = lococo.generate(model, ids, **kw)
        elif route == "model.generate":
            out = model.generate(ids, past_key_values=lococo.make_cache(model, "lococo"), **kw)
        else:
            out = model.generate(ids, **kw)
    return {"route": route, "length": length, "peak_rss_mb": round(rss.peak / 2**20, 1),
            "seconds": round(time.perf_counter() - t0, 1), "new_tokens": out.shape[1] - length,
            "threads": threads}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", type=int, nargs="+", default=[16384, 32768])
    ap.add_argument("--route", nargs="+", default=list(ROUTES), choices=ROUTES)
    ap.add_argument("--full-max-length", type=int, default=16384, help="longest length for the full cache")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--output", type=Path, default=Path("benchmarks/results/generate_memory.json"))
    ap.add_argument("--cell", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cell:
        route, length = json.loads(args.cell)
        print(RESULT + json.dumps(run_cell(route, length, args.threads)), flush=True)
        return
    records = json.loads(args.output.read_text()) if args.output.exists() else []
    done = {(r["route"], r["length"]) for r in records}
    for length in args.length:
        for route in args.route:
            if (route, length) in done or (route == "full cache" and length > args.full_max_length):
                continue
            cmd = [sys.executable, __file__, "--cell", json.dumps([route, length]), "--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [x for x in proc.stdout.splitlines() if x.startswith(RESULT)]
            if not lines:
                raise SystemExit(f"cell {route} {length} failed:\n{proc.stderr[-3000:]}")
            records.append(json.loads(lines[0][len(RESULT):]))
            print(records[-1], flush=True)
            args.output.write_text(json.dumps(records, indent=1) + "\n")
    write_table(records, args.output.with_suffix(".md"))


def write_table(records: list[dict], path: Path) -> None:
    rows = ["| length | route | peak RSS (MB) | / lococo.generate | seconds |", "|---|---|---|---|---|"]
    base = {r["length"]: r["peak_rss_mb"] for r in records if r["route"] == "lococo.generate"}
    for r in sorted(records, key=lambda r: (r["length"], ROUTES.index(r["route"]))):
        ratio = f"{r['peak_rss_mb'] / base[r['length']]:.2f}" if r["length"] in base else "-"
        rows.append(f"| {r['length']} | {r['route']} | {r['peak_rss_mb']:.0f} | {ratio} | {r['seconds']:.0f} |")
    note = ("Command: `python benchmarks/generate_memory.py` (one process per cell, reference model fp32, shipped "
            "M = 128 heads, held-out text, 4 new tokens, 1 thread).")
    path.write_text(note + "\n\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
