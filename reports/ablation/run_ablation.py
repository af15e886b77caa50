"""Ablation study (issue #12): which LoCoCo settings matter, on which kind of text, at a fixed token budget.

    python reports/ablation/run_ablation.py                        # every kind x every variant, resumable
    python reports/ablation/run_ablation.py --kinds code --variants base kernel5 tova
    python reports/ablation/run_ablation.py --summarize            # tables and plot from what is done

For each kind of text (narrative: the bundled essays and plays; code: mypy's Python modules; math: SymPy's
documentation; see ``lococo.data``) and each variant, heads are trained on that kind's training split under
the same budget (``--steps`` x ``--n-segments`` x ``--segment-size`` tokens, same seed, same data order),
then read ``--docs`` held-out sequences of ``--length`` tokens of the same kind: perplexity (mean over
documents with a 95% bootstrap interval, and the paired difference against the ``base`` variant and
against TOVA) and decode fidelity (the last ``--decode-tokens`` tokens fed one at a time, against the same
tokens read as one segment). Untrained references (TOVA, the full cache, and exact top-M selection, i.e.
LoCoCo with lambda fixed at 0) are read the same way.

Everything goes through the public API (``lococo.load_model``, ``attach``, ``train_heads``, ``make_cache``,
``lococo.evaluation``). Each finished (kind, variant) is one line of ``results.jsonl``; a rerun skips them and
resumes an interrupted training from its last checkpoint. ``ablation.md`` and ``ablation.png`` (next to
``--output``) are rewritten after every cell.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import lococo
from lococo.data import load_texts, pack, tokenize_documents
from lococo.evaluation.decode import decode_fidelity
from lococo.evaluation.grid import pyplot
from lococo.evaluation.perplexity import eval_sequences
from lococo.evaluation.stats import paired_difference
from lococo.training.config import TrainConfig
from lococo.training.loop import train_heads

HERE = Path(__file__).parent
KINDS = {"narrative": "bundled:narrative", "code": "bundled:code", "math": "bundled:math"}

# name: (knob, LoCoCoConfig overrides). "base" is the paper's default (docs/method.md).
VARIANTS: dict[str, tuple[str, dict]] = {
    "base": ("base", {}),
    "kernel5": ("kernel size", {"kernel_size": 5}),
    "kernel63": ("kernel size", {"kernel_size": 63}),
    "rho0": ("rho", {"hh_keep_rate": 0.0}),
    "rho0.25": ("rho", {"hh_keep_rate": 0.25}),
    "rho0.75": ("rho", {"hh_keep_rate": 0.75}),
    "depth2": ("conv depth", {"n_conv_layers": 2}),
    "lambda0.1": ("lambda init", {"lambda_init": 0.1}),
    "lambda0.9": ("lambda init", {"lambda_init": 0.9}),
    "accumulated": ("score mode", {"score_mode": "accumulated"}),
    "query": ("score mode", {"score_mode": "query"}),  # TOVA's rule: the latest query, all heads of the layer
    "buffer64": ("buffer", {"buffer": 64}),
    # ReLU before the softmax leaves dead channels as uniform averages of every evicted token
    # (reports/mixing/shipped_m128.txt: 11.9% of the shipped heads' fused slots)
    "identity": ("activation", {"activation": "identity"}),
    # cheaper convolutions (issue 15): multiply-adds per token at M = 128 (2d = 128 channels, C = 64, k = 21):
    # full 172K, a 1x1 projection to 32 channels first 47K (3.7x fewer), depthwise + 1x1 11K (16x fewer)
    "bottleneck32": ("conv architecture", {"bottleneck": 32}),
    "separable": ("conv architecture", {"separable": True}),
}
# Untrained references, read with the same protocol.
REFERENCES: dict[str, tuple[str, dict]] = {
    "tova": ("reference", {}),
    "full": ("reference", {}),
    "selection": ("reference", {"lambda_init": 0.0}),  # LoCoCo with lambda = 0: exact top-M by score
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--variants", nargs="+", default=[*REFERENCES, *VARIANTS],
                        choices=[*REFERENCES, *VARIANTS])
    parser.add_argument("--mem-size", type=int, default=128)
    parser.add_argument("--segment-size", type=int, default=512)
    parser.add_argument("--n-segments", type=int, default=4, help="training sequence: n_segments x segment_size")
    parser.add_argument("--steps", type=int, default=16, help="optimiser steps (one sequence each): the budget")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--length", type=int, default=4096, help="held-out sequence length")
    parser.add_argument("--docs", type=int, default=4, help="held-out sequences per kind")
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", default="runs/ablation", help="checkpoints and trained heads")
    parser.add_argument("--output", default=str(HERE / "results.jsonl"))
    parser.add_argument("--summarize", action="store_true", help="only rewrite ablation.md/.png")
    return parser.parse_args()


def done_cells(path: Path) -> dict[tuple[str, str], dict]:
    if not path.exists():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["kind"], r["variant"]): r for r in records}


def run_cell(kind: str, variant: str, args: argparse.Namespace) -> dict:
    knob, overrides = {**VARIANTS, **REFERENCES}[variant]
    model, tokenizer = lococo.load_model()
    torch.manual_seed(0)  # the same fresh heads for every kind
    settings = {"mem_size": args.mem_size, "segment_size": args.segment_size, **overrides}
    record = {"kind": kind, "variant": variant, "knob": knob, "settings": settings, "train_tokens": 0,
              "train_seconds": 0.0}
    if variant in ("tova", "full"):
        policy = variant
    else:
        lococo.attach(model, lococo.LoCoCoConfig(**settings))
        policy = "lococo"
        if variant in VARIANTS:
            heads = lococo.get_heads(model).config
            cfg = TrainConfig(
                output_dir=f"{args.runs}/{kind}/{variant}", mem_size=heads.mem_size, buffer=heads.buffer,
                segment_size=args.segment_size, n_segments=args.n_segments, grad_accum=1, max_steps=args.steps,
                lr_heads=args.lr, save_every=4, keep_last=1, resume=True, seed=0, save_dtype=None,
            )
            rows = pack(tokenize_documents(load_texts(f"{KINDS[kind]}:train"), tokenizer), cfg.n_segments,
                        cfg.segment_size)
            start = time.perf_counter()
            train_heads(model, rows, cfg)
            record["train_seconds"] = time.perf_counter() - start
            record["train_tokens"] = args.steps * args.n_segments * args.segment_size
    docs = tokenize_documents(load_texts(f"{KINDS[kind]}:heldout"), tokenizer)
    sequences = eval_sequences(docs, args.length, args.docs)
    kwargs = {} if policy == "full" else {"mem_size": args.mem_size}
    result = decode_fidelity(model, sequences, lambda: lococo.make_cache(model, policy, **kwargs), args.segment_size,
                             args.decode_tokens, progress=False)
    record.update(result, length=args.length, eval_tokens=sum(s.numel() for s in sequences))
    return record


def _interval(value: float, low: float | None, high: float | None, digits: int = 3) -> str:
    if low is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def summarize(records: dict[tuple[str, str], dict], args: argparse.Namespace) -> None:
    lines = [
        "# Ablation: LoCoCo settings x kinds of text (issue #12)",
        "",
        f"Command: `python reports/ablation/run_ablation.py` (settings in `results.jsonl`). M = {args.mem_size}; "
        f"each trained variant: {args.steps} steps x {args.n_segments} x {args.segment_size} = "
        f"{args.steps * args.n_segments * args.segment_size:,} training tokens of its kind's training split; "
        f"evaluation: {args.docs} held-out sequences of {args.length} tokens of the same kind, fp32. "
        "Intervals are 95% bootstrap over documents; differences are paired on the same documents "
        "(nats per token; negative = better than the reference). Decode: perplexity of the last "
        f"{args.decode_tokens} tokens fed one at a time over the same tokens read as one segment.",
        "",
    ]
    for kind in KINDS:
        rows = {v: r for (k, v), r in records.items() if k == kind}
        if not rows:
            continue
        lines += [f"## {kind}", "", "| variant | knob | ppl | vs base (nats) | vs TOVA (nats) | decode/segment | "
                  "train tokens | train min |", "|---|---|---|---|---|---|---|---|"]
        for variant in [*REFERENCES, *VARIANTS]:
            r = rows.get(variant)
            if r is None:
                continue
            cells = []
            for ref in ("base", "tova"):
                other = rows.get(ref)
                if other is None or ref == variant:
                    cells.append("")
                    continue
                diff = paired_difference(r["doc_nll"], other["doc_nll"])
                cells.append(_interval(*diff))
            lines.append(
                f"| {variant} | {r['knob']} | {_interval(r['ppl'], r['ppl_low'], r['ppl_high'], 2)} | {cells[0]} | "
                f"{cells[1]} | {_interval(r['decode_ratio'], r['decode_ratio_low'], r['decode_ratio_high'])} | "
                f"{r['train_tokens']:,} | {r['train_seconds'] / 60:.0f} |"
            )
        lines.append("")
    folder = Path(args.output).parent
    (folder / "ablation.md").write_text("\n".join(lines))
    plot(records, folder / "ablation.png")


def plot(records: dict[tuple[str, str], dict], path: Path) -> None:
    plt = pyplot()
    kinds = [k for k in KINDS if any(kk == k for kk, _ in records)]
    if not kinds:
        return
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.5 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        rows = {v: r for (k, v), r in records.items() if k == kind}
        ref = rows.get("tova")
        names, means, errs = [], [], []
        for variant in [*REFERENCES, *VARIANTS]:
            if variant not in rows or ref is None or variant == "tova":
                continue
            mean, low, high = paired_difference(rows[variant]["doc_nll"], ref["doc_nll"])
            names.append(variant)
            means.append(mean)
            errs.append([mean - low if low is not None else 0.0, high - mean if high is not None else 0.0])
        if not names:
            continue
        y = range(len(names))
        ax.errorbar(means, list(y), xerr=list(zip(*errs, strict=True)) if errs else None, fmt="o", capsize=3)
        ax.axvline(0.0, color="grey", lw=0.8)
        ax.set_yticks(list(y), names, fontsize=8)
        ax.set_xlabel("nll - TOVA's (nats/token, 95% CI)", fontsize=8)
        ax.set_title(kind, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    output = Path(args.output)
    records = done_cells(output)
    if not args.summarize:
        for kind in args.kinds:
            for variant in args.variants:
                if (kind, variant) in records:
                    continue
                print(f"ablation: {kind} / {variant}", flush=True)
                record = run_cell(kind, variant, args)
                with output.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                records[(kind, variant)] = record
                summarize(records, args)
                print(f"  ppl {record['ppl']:.2f}, decode/segment {record['decode_ratio']:.3f}", flush=True)
    summarize(records, args)


if __name__ == "__main__":
    main()
