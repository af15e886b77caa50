"""The 'clamped' positions scheme against the others, paired on the same held-out sequences.

    python reports/positions/compare_clamped.py > reports/positions/clamped.md

Reads the committed reports: 8K (reports/ppl_docs16.json, reports/positions/ppl_8k_clamped.json), 32K
(reports/positions/ppl_32k_{a,b,c,d}.json; M = 512: ppl_32k_m512_{a,b}.json) and 128K (reports/book/ppl_128k*.json); writes Markdown to stdout.
Differences are in mean nll per token (nats) with 95% bootstrap intervals over sequences (none with one). Below
each table, every policy measured with 'clamped' is paired with its own other schemes.
"""

from __future__ import annotations

import json
from pathlib import Path

from lococo.evaluation.stats import paired_difference

ROOT = Path(__file__).resolve().parents[2]
FILES = {  # (length, M): reports
    (8192, 128): ["reports/ppl_docs16.json", "reports/positions/ppl_8k_clamped.json"],
    (32768, 128): [f"reports/positions/ppl_32k_{x}.json" for x in "abcd"],
    (32768, 512): [f"reports/positions/ppl_32k_m512_{x}.json" for x in "ab"],
    (131072, 128): ["reports/book/ppl_128k.json", "reports/book/ppl_128k_select.json",
                    "reports/book/ppl_128k_tova_absolute.json", "reports/book/ppl_128k_clamped.json",
                    "reports/book/ppl_128k_clamped_heuristics.json"],
}


def _label(r: dict) -> str:
    heads = r.get("heads") or ""
    suffix = ", lambda = 0" if "m128_sel" in str(heads) else ""
    return f"{r['policy']} ({r.get('positions') or 'absolute'}{suffix})" if r["policy"] != "full" else "full"


def main() -> None:
    print("# Key positions: 'clamped' against absolute and re-indexed (held-out text)\n")
    print(__doc__.split("\n\n")[2].replace("\n", " ") + "\n")
    for (length, mem), files in FILES.items():
        records = []
        for f in files:
            if not (ROOT / f).exists():  # a grid not run yet
                continue
            data = json.loads((ROOT / f).read_text())
            heads = data["meta"]["config"].get("heads")
            records += [{**r, "heads": heads} for r in data["records"] if r.get("mem_size") in (mem, None)]
        ref = next((r for r in records if r["policy"] == "lococo" and r.get("positions") == "clamped"), None)
        if ref is None:  # not run yet
            continue
        n = len(ref["doc_nll"])
        print(f"## {length:,} tokens, M = {mem}, {n} sequence(s)\n")
        print("| policy (positions) | ppl | loss past 32K | lococo (clamped) − this (nats) |")
        print("|---|---|---|---|")
        for r in sorted(records, key=lambda r: r["nll"]):
            late = {k: v for k, v in r.get("loss_by_bucket", {}).items() if k in ("32K-64K", "64K-128K")}
            late_s = " / ".join(f"{v:.3f}" for v in late.values())
            if r is ref:
                diff = "–"
            elif len(r.get("doc_nll") or []) != n:
                diff = "(other sequences)"
            else:
                d, lo, hi = paired_difference(ref["doc_nll"], r["doc_nll"])
                diff = f"{d:+.4f}" + ("" if lo is None else f" [{lo:+.4f}, {hi:+.4f}]")
            print(f"| {_label(r)} | {r['ppl']:.2f} | {late_s} | {diff} |")
        print()
        for own in records:
            if own["policy"] == "lococo" or own.get("positions") != "clamped":
                continue
            for r in records:
                same = r["policy"] == own["policy"] and r is not own and "m128_sel" not in str(r["heads"])
                if same and len(r["doc_nll"]) == len(own["doc_nll"]):
                    d, lo, hi = paired_difference(own["doc_nll"], r["doc_nll"])
                    interval = "" if lo is None else f" [{lo:+.4f}, {hi:+.4f}]"
                    print(f"{own['policy']} (clamped) − {_label(r)}: {d:+.4f}{interval} nats\n")

if __name__ == "__main__":
    main()
