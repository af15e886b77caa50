"""Selection or mixing at M = 512: the trained M = 512 heads against the same heads with lambda = 0, and TOVA.

    mkdir -p /tmp/m512 && git archive 0fb6ac0 src/lococo/compressor/pretrained/smollm2-135m-m512 | tar -x -C /tmp/m512
    python reports/lambda/m512_selection.py --heads /tmp/m512/src/lococo/compressor/pretrained/smollm2-135m-m512
    # ~25 min on one thread; 0fb6ac0 is the last commit with the trained lambdas
    python reports/lambda/m512_selection.py --summary                               # -> m512_selection.md

Every 8K-token held-out sequence (11, as reports/ppl_docs16.json), 512-token segments, fp32, one thread.
``lambda0`` is the trained heads with every ``lam_logit`` at -inf (their conv skipped): exact top-M selection
by the heads' scores. One JSON line per variant in ``m512_selection.jsonl``; done variants are skipped.
The shipped M = 512 heads were set to lambda = 0 from this comparison (reports/training/exact_zero_lambda.py).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import lococo
from lococo.data import load_texts, tokenize_documents
from lococo.evaluation.perplexity import document_windows, perplexity
from lococo.evaluation.stats import gap_closed, paired_difference

HERE = Path(__file__).parent
OUTPUT = HERE / "m512_selection.jsonl"


def summary() -> str:
    rows = {r["name"]: r for r in map(json.loads, OUTPUT.read_text().splitlines())}
    full = next(r for r in json.loads(Path("reports/ppl_docs16.json").read_text())["records"] if r["policy"] == "full")
    lines = [f"# Selection or mixing at M = 512 ({len(rows['tova']['doc_nll'])} held-out 8K sequences)", "",
             "`python reports/lambda/m512_selection.py --summary`; full cache (reports/ppl_docs16.json) "
             f"{math.exp(sum(full['doc_nll']) / len(full['doc_nll'])):.2f}. Paired differences in nats per token, "
             "95% bootstrap intervals over the sequences.", "",
             "| variant | ppl | seconds | vs TOVA | vs trained | gap to full closed vs TOVA |", "|---|---|---|---|---|---|"]
    def cell(name: str, other: str) -> str:
        if other == name or other not in rows:
            return ""
        d = paired_difference(rows[name]["doc_nll"], rows[other]["doc_nll"])
        return f"{d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}]"

    for name, r in rows.items():
        g = gap_closed(r["doc_nll"], rows["tova"]["doc_nll"], full["doc_nll"]) if name != "tova" else None
        gap = "" if g is None else f"{g[0]:.1%} [{g[1]:.1%}, {g[2]:.1%}]"
        lines.append(f"| {name} | {r['ppl']:.3f} | {r['seconds']} | {cell(name, 'tova')} | {cell(name, 'trained')} | {gap} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", default="shipped", help="the trained M = 512 heads (a folder)")
    parser.add_argument("--summary", action="store_true")
    args = parser.parse_args()
    if args.summary:
        OUTPUT.with_suffix(".md").write_text(summary())
        return
    torch.set_num_threads(1)
    model, tokenizer = lococo.load_model()
    sequences = document_windows(tokenize_documents(load_texts(None, split="heldout"), tokenizer), 8192, 16, 1)[0]
    done = {json.loads(line)["name"] for line in OUTPUT.read_text().splitlines()} if OUTPUT.exists() else set()
    for name in ("lambda0", "tova", "trained"):
        if name in done:
            continue

        def make(name=name):
            if name == "tova":
                return lococo.make_cache(model, "tova", mem_size=512)
            cache = lococo.make_cache(model, "lococo", heads=args.heads, mem_size=512)
            if name == "lambda0":
                with torch.no_grad():
                    for head in lococo.get_heads(model).heads.values():
                        head.lam_logit.fill_(float("-inf"))
            return cache

        start = time.time()
        result = perplexity(model, sequences, make, 512, progress=False)
        with OUTPUT.open("a") as fh:
            fh.write(json.dumps({"name": name, "ppl": result["ppl"], "doc_nll": result["doc_nll"],
                                 "seconds": round(time.time() - start)}) + "\n")


if __name__ == "__main__":
    main()
