"""Summarise absolute vs re-indexed key positions (issue #14, item 1) from the committed ppl grids.

    python reports/positions/summarize.py ppl_32k_a.json ppl_32k_b.json [--output positions.md]

Inputs: `lococo eval ppl ... --positions absolute reindexed` reports (reports/run_reports.sh positions, and
reports/book/run_book.sh). Writes a Markdown table (perplexity and mean loss per position bucket, each policy
with both schemes; the paired difference re-indexed - absolute on the same documents, whole sequence and per
bucket where the records carry per-document buckets) and a PNG of the loss by bucket.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lococo.evaluation.grid import pyplot
from lococo.evaluation.stats import paired_difference

HERE = Path(__file__).parent


def _fmt(stat: tuple, digits: int = 3) -> str:
    mean, low, high = stat
    if low is None:
        return f"{mean:+.{digits}f}"
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def _load(paths: list[Path]) -> list[dict]:
    records = []
    for path in paths:
        records += json.loads(path.read_text())["records"]
    return records


def summarize(records: list[dict]) -> str:
    by_key = {(r["policy"], r.get("mem_size"), r.get("positions", "absolute")): r for r in records}
    buckets = list(next(iter(records))["loss_by_bucket"])
    length = records[0]["length"]
    docs = records[0]["docs"]
    lines = [f"# Key positions past the model's context: absolute vs re-indexed (length {length:,}, {docs} "
             "held-out sequences)", "",
             "Mean loss (nats) per bucket of the predicted token's position; perplexity over the whole sequence "
             "with its 95% bootstrap interval over documents. The reference model was trained to 8,192 tokens.",
             "", "| policy | M | positions | ppl | " + " | ".join(buckets) + " |",
             "|---|---|---|---|" + "---|" * len(buckets)]
    for (policy, mem, positions), r in sorted(by_key.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0, kv[0][2])):
        interval = f" [{r['ppl_low']:.2f}, {r['ppl_high']:.2f}]" if r.get("ppl_low") else ""
        cells = " | ".join(f"{r['loss_by_bucket'].get(b, float('nan')):.3f}" for b in buckets)
        lines.append(f"| {policy} | {mem or ''} | {positions} | {r['ppl']:.2f}{interval} | {cells} |")
    late = [b for b in buckets if _low_edge(b) >= 8192]
    lines += ["", "## Re-indexed - absolute, paired on the same documents (nats; negative: re-indexing helps)", "",
              "| policy | M | whole sequence | " + " | ".join(f"bucket {b}" for b in late) + " |",
              "|---|---|---|" + "---|" * len(late)]
    for (policy, mem, positions), r in sorted(by_key.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        if positions != "reindexed" or (policy, mem, "absolute") not in by_key:
            continue
        a = by_key[(policy, mem, "absolute")]
        whole = _fmt(paired_difference(r["doc_nll"], a["doc_nll"]))
        per = []
        for b in late:
            if r.get("doc_loss_by_bucket") and a.get("doc_loss_by_bucket"):
                per.append(_fmt(paired_difference([d[b] for d in r["doc_loss_by_bucket"]],
                                                  [d[b] for d in a["doc_loss_by_bucket"]])))
            else:
                per.append(f"{r['loss_by_bucket'][b] - a['loss_by_bucket'][b]:+.3f}")
        lines.append(f"| {policy} | {mem or ''} | {whole} | " + " | ".join(per) + " |")
    if any(not r.get("doc_loss_by_bucket") for r in records):
        lines += ["", "Per-bucket differences without an interval come from records that carry only the pooled "
                  "buckets (written before per-document buckets were recorded)."]
    return "\n".join(lines) + "\n"


def _low_edge(label: str) -> int:
    low = label.split("-")[0]
    return int(float(low[:-1]) * 1024) if low.endswith("K") else int(low)


def plot(records: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colors = {}
    for r in sorted(records, key=lambda r: (r["policy"], r.get("positions", "absolute"))):
        color = colors.setdefault(r["policy"], f"C{len(colors)}")
        style = "--" if r.get("positions") == "reindexed" else "-"
        buckets = r["loss_by_bucket"]
        ax.plot(list(buckets), list(buckets.values()), style, marker="o", color=color,
                label=f"{r['policy']} {r.get('positions', 'absolute')}")
    ax.set_xlabel("position of the predicted token")
    ax.set_ylabel("mean loss (nats)")
    ax.set_title("absolute (solid) vs re-indexed (dashed) key positions", fontsize=10)
    ax.tick_params(axis="x", rotation=30)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", type=Path)
    parser.add_argument("--output", type=Path, default=HERE / "positions.md")
    args = parser.parse_args()
    records = _load([p if p.is_absolute() or p.exists() else HERE / p for p in args.inputs])
    args.output.write_text(summarize(records))
    plot(records, args.output.with_suffix(".png"))
    print(f"wrote {args.output} and {args.output.with_suffix('.png')}")


if __name__ == "__main__":
    main()
