"""Training memory and speed against sequence length: LoCoCo heads vs plain forward+backward.

For each length N, in a fresh process each: (a) one LoCoCo training sequence of N tokens read in
segments of B through the M-slot cache (one backward per segment, model frozen, heads learning);
(b) one plain forward+backward of the same model over the whole N tokens (full attention; gradients for
the same head-sized budget are irrelevant here, so the model's norms are made trainable to force a
full backward). Peak RSS is sampled during the step; the model load is outside the window.

    python benchmarks/train_memory.py --length 4096 8192 16384 --threads 1

With ``--extend-to N`` the LoCoCo cells train as ``lococo train --extend-to N`` does: RoPE interpolation to N
tokens, LoRA on q/k/v/o, embeddings and norms trainable, plus the heads (context extension, issue #7):

    python benchmarks/train_memory.py --extend-to 32768 --mem-size 512 --modes lococo --dtype bfloat16 \
        --length 8192 16384 32768 --output benchmarks/results/extension_train_memory.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch

RESULT = "TRAIN_MEMORY_RESULT "


def one_cell(mode: str, length: int, mem_size: int, segment_size: int, threads: int,
             extend_to: int | None = None, dtype: str = "float32") -> dict:
    import lococo
    from lococo.data import long_text_ids
    from lococo.evaluation.bench import RssSampler
    from lococo.training.config import TrainConfig
    from lococo.training.loop import prepare_model, sequence_loss, trainable_parameters

    torch.set_num_threads(threads)
    model, tokenizer = lococo.load_model(dtype=dtype)
    ids = long_text_ids(tokenizer, length, split="train")
    with torch.no_grad():
        model(input_ids=ids[:, :16])  # page the memory-mapped weights in before measuring
    if mode == "lococo":
        from accelerate import Accelerator

        cfg = TrainConfig(mem_size=mem_size, segment_size=segment_size, n_segments=length // segment_size,
                          extend_to=extend_to)
        prepare_model(model, cfg)
        trainable_parameters(model, cfg)
        accelerator = Accelerator(cpu=True)
    else:
        for name, p in model.named_parameters():
            p.requires_grad_("norm" in name)
    before = psutil.Process().memory_info().rss
    with RssSampler() as sampler:
        t0 = time.perf_counter()
        if mode == "lococo":
            sequence_loss(model, model, ids, cfg, accelerator, scale=1.0, sync_at_end=True)
        else:
            model(input_ids=ids, labels=ids).loss.backward()
        seconds = time.perf_counter() - t0
    return {"mode": mode, "length": length, "mem_size": mem_size if mode == "lococo" else None,
            "segment_size": segment_size if mode == "lococo" else None, "extend_to": extend_to,
            "dtype": dtype, "tokens_per_s": length / seconds,
            "peak_rss_mb": sampler.peak / 2**20, "peak_rss_growth_mb": (sampler.peak - before) / 2**20,
            "threads": threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--length", type=int, nargs="+", default=[4096, 8192, 16384])
    parser.add_argument("--mem-size", type=int, default=128)
    parser.add_argument("--segment-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--modes", nargs="+", default=["lococo", "plain"])
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="model dtype")
    parser.add_argument("--extend-to", type=int, default=None,
                        help="LoCoCo cells train a context extension to this many tokens (RoPE + LoRA + heads)")
    parser.add_argument("--plain-max-length", type=int, default=8192,
                        help="skip plain forward+backward beyond this length (its memory grows ~1.8 GB per 1K "
                             "tokens here, so 16K would not fit in 24 GB)")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/train_memory.json"))
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        print(RESULT + json.dumps(one_cell(**json.loads(args.cell))), flush=True)
        return
    from lococo.evaluation.report import run_meta, write_report

    records = json.loads(args.output.read_text())["records"] if args.output.exists() else []
    done = {(r["mode"], r["length"]) for r in records}
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "cell"}
    for length in args.length:
        for mode in args.modes:
            if (mode, length) in done:
                continue  # resume: cells already measured by this script
            if mode == "plain" and length > args.plain_max_length:
                records.append({"mode": mode, "length": length, "skipped": f"longer than --plain-max-length "
                                f"{args.plain_max_length}: would exhaust this machine's memory"})
                write_report(args.output, run_meta("train_memory", config), records)
                continue
            cell = dict(mode=mode, length=length, mem_size=args.mem_size, segment_size=args.segment_size,
                        threads=args.threads, extend_to=args.extend_to,
                        dtype=args.dtype)
            proc = subprocess.run([sys.executable, __file__, "--cell", json.dumps(cell)], capture_output=True, text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
            if not lines:
                raise SystemExit(f"cell {cell} failed:\n{proc.stderr[-3000:]}")
            records.append(json.loads(lines[-1][len(RESULT) :]))
            print(json.dumps(records[-1]), flush=True)
            write_report(args.output, run_meta("train_memory", config), records)


if __name__ == "__main__":
    main()
