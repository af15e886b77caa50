"""Summarise the heads trained with re-indexed positions against the committed reports on the same sequences.

    python reports/reindexed_heads/summarize.py    # writes reports/reindexed_heads/results.md and results.png

Inputs (all written by committed commands): this folder's ppl_{8k,32k,128k}.json and decode_8k.json
(run.sh), and the reports they are paired with: reports/ppl_docs16.json (8K, 11 sequences),
reports/positions/ppl_32k_{a,b}.json (32K, 4 sequences), reports/book/ppl_128k.json (128K, 1 sequence),
reports/decode.json (decode fidelity after 8K, 4 sequences). A missing input leaves its section out.
"""

from __future__ import annotations

import json
from pathlib import Path

from lococo.evaluation.grid import pyplot
from lococo.evaluation.stats import gap_closed, paired_difference

HERE = Path(__file__).parent
REPORTS = HERE.parent
NEW = "lococo, heads trained re-indexed"
LENGTHS = {
    "8K": ("ppl_8k.json", [REPORTS / "ppl_docs16.json"]),
    "32K": ("ppl_32k.json", [REPORTS / "positions" / "ppl_32k_a.json", REPORTS / "positions" / "ppl_32k_b.json"]),
    "128K": ("ppl_128k.json", [REPORTS / "book" / "ppl_128k.json"]),
}


def _records(path: Path) -> list[dict]:
    return json.loads(path.read_text())["records"] if path.exists() else []


def _label(record: dict) -> str:
    name = "lococo, shipped heads" if record["policy"] == "lococo" else record["policy"]
    return f"{name} ({record.get('positions', 'absolute')})" if record.get("mem_size") else name


def _fmt(stat: tuple, scale: float = 1.0, digits: int = 3, unit: str = "") -> str:
    mean, low, high = stat
    if low is None:
        return f"{mean * scale:+.{digits}f}{unit}"
    return f"{mean * scale:+.{digits}f}{unit} [{low * scale:+.{digits}f}, {high * scale:+.{digits}f}]"


def _ppl(record: dict) -> str:
    interval = f" [{record['ppl_low']:.2f}, {record['ppl_high']:.2f}]" if record.get("ppl_low") else ""
    return f"{record['ppl']:.2f}{interval}"


def _ppl_section(title: str, new: dict, others: list[dict]) -> list[str]:
    compressed = [r for r in others if r.get("mem_size") and r["policy"] != "lococo"]
    full = next((r for r in others if r["policy"] == "full"), None)
    best = min(compressed, key=lambda r: r["ppl"])
    buckets = list(new["loss_by_bucket"])[-4:]  # the farthest positions, where compressions have compounded
    lines = [f"## {title} tokens: {new['docs']} held-out sequence(s), {new['tokens']:,} scored tokens per policy",
             "", f"| policy | ppl | Δ nll, new heads − this (nats) | {' | '.join(buckets)} |",
             "|---|---|---|" + "---|" * len(buckets)]
    for r in [new, *sorted(others, key=lambda r: r["ppl"])]:
        diff = "–" if r is new else _fmt(paired_difference(new["doc_nll"], r["doc_nll"]))
        cells = " | ".join(f"{r['loss_by_bucket'].get(b, float('nan')):.3f}" for b in buckets)
        name = f"**{NEW} ({new.get('positions', 'absolute')})**" if r is new else _label(r)
        lines.append(f"| {name} | {_ppl(r)} | {diff} | {cells} |")
    if full is not None:
        closed = gap_closed(new["doc_nll"], best["doc_nll"], full["doc_nll"])
        lines += ["", f"Gap between the best other compressed policy ({_label(best)}) and the full cache closed by "
                  f"the new heads: {_fmt(closed, 100, 1, '%')}."]
    return lines + [""]


def _decode_section(new: dict, others: list[dict]) -> list[str]:
    lines = [f"## Decode fidelity after {new['length']:,} tokens: {new['docs']} sequences, the last "
             f"{new['decode_tokens']} tokens fed one at a time against the same tokens read as one segment", "",
             "| policy | decode / segment perplexity | decode ppl |", "|---|---|---|"]
    for r in [new, *sorted(others, key=lambda r: r["decode_ratio"])]:
        name = f"**{NEW}**" if r is new else _label(r)
        lines.append(f"| {name} | {r['decode_ratio']:.3f} [{r['decode_ratio_low']:.3f}, {r['decode_ratio_high']:.3f}]"
                     f" | {r['decode_ppl']:.2f} |")
    return lines + [""]


def main() -> None:
    lines = ["# LoCoCo heads trained with re-indexed positions (issue 13)", "",
             "Written by `python reports/reindexed_heads/summarize.py` from `bash reports/reindexed_heads/run.sh`; "
             "differences are paired on the same sequences with 95% bootstrap intervals over sequences (none with "
             "one sequence). Mean loss (nats) per bucket of the predicted token's position.", ""]
    panels = []
    for title, (name, refs) in LENGTHS.items():
        new = _records(HERE / name)
        others = [r for ref in refs for r in _records(ref)]
        if new and others:
            lines += _ppl_section(title, new[0], others)
            panels.append((title, new[0], others))
    decode = _records(HERE / "decode_8k.json")
    if decode:
        lines += _decode_section(decode[0], [r for r in _records(REPORTS / "decode.json") if r["policy"] != "full"])
    (HERE / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))
    if panels:
        _plot(panels, HERE / "results.png")


def _plot(panels: list[tuple[str, dict, list[dict]]], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (title, new, others) in zip(axes[0], panels, strict=True):
        for r in [*others, new]:
            if not r.get("mem_size"):
                continue
            buckets = r["loss_by_bucket"]
            style = dict(color="black", linewidth=2.5) if r is new else {}
            ax.plot(list(buckets), list(buckets.values()), marker="o", label=NEW if r is new else _label(r), **style)
        ax.set_title(f"{title} tokens", fontsize=10)
        ax.set_xlabel("position of the predicted token")
        ax.set_ylabel("mean loss (nats)")
        ax.tick_params(axis="x", rotation=30)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
