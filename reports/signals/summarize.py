"""Summarise the training-signal comparison (issue #13): held-out perplexity of heads trained with lm, kl and layer
(and lm with TOVA's query scores) against TOVA, the full cache and the shipped heads on the same 11 sequences, and the training curves.

    python reports/signals/summarize.py    # writes reports/signals/README.md's table (signals.md), curves.png
                                           # (in-training metric) and gap.png (gap closed vs tokens and CPU time)

Inputs: reports/ppl_docs16.json (full, TOVA, SnapKV, shipped LoCoCo), reports/signals/{ppl,decode}_VARIANT.json and
reports/signals/VARIANT/metrics.jsonl, all written by committed commands (run_signals.sh, run_reports.sh).
"""

from __future__ import annotations

import json
from pathlib import Path

from lococo.evaluation.grid import pyplot
from lococo.evaluation.stats import gap_closed, paired_difference

HERE = Path(__file__).parent
REPORTS = HERE.parent
LABELS = {"lm": "trained with lm", "kl": "trained with kl", "layer": "trained with layer",
          "query": "trained with lm, query scores", "shipped-query": "shipped heads read with query scores",
          "shipped-recent": "shipped heads read with recent scores",
          "shipped-hybrid": "shipped heads read with hybrid scores",
          "shipped-hybrid-select": "shipped heads, hybrid scores, selection only in decoding"}
"""Variant (run_signals.sh's argument) -> its label in the table and the plot."""


def _records(path: Path) -> list[dict]:
    return json.loads(path.read_text())["records"] if path.exists() else []


def _fmt(stat: tuple, scale: float = 1.0, digits: int = 4, unit: str = "") -> str:
    mean, low, high = stat
    if low is None:
        return f"{mean * scale:+.{digits}f}{unit}"
    return f"{mean * scale:+.{digits}f}{unit} [{low * scale:+.{digits}f}, {high * scale:+.{digits}f}]"


def main() -> None:
    base = {r["policy"]: r for r in _records(REPORTS / "ppl_docs16.json")}
    rows = {"TOVA": base["tova"], "SnapKV": base["snapkv"], "LoCoCo, shipped heads, last scores": base["lococo"]}
    decode = {"TOVA": "tova", "SnapKV": "snapkv", "LoCoCo, shipped heads, last scores": "lococo"}
    decode = {name: r for r in _records(REPORTS / "decode.json") for name, p in decode.items() if r["policy"] == p}
    for signal, label in LABELS.items():
        for r in _records(HERE / f"ppl_{signal}.json"):
            rows[f"LoCoCo, {label}"] = r
        for r in _records(HERE / f"decode_{signal}.json"):
            decode[f"LoCoCo, {label}"] = r
    full, tova = base["full"], base["tova"]
    lines = [
        f"Held-out perplexity at 8K tokens, M = 128, {len(full['doc_nll'])} sequences ({full['tokens']:,} scored "
        "tokens per policy), fp32; 95% bootstrap intervals over documents, differences paired on the same "
        f"documents. Full cache: {full['ppl']:.2f}.",
        "",
        "Decode fidelity (where measured): after 8K tokens, the last 256 of 4 sequences fed one at a time, their "
        "perplexity over the same tokens read as one segment (reports/decode.json's protocol).",
        "",
        "| policy | ppl | Δ nll vs TOVA (nats) | gap to full closed | decode / segment |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        diff = paired_difference(r["doc_nll"], tova["doc_nll"]) if r is not tova else None
        closed = gap_closed(r["doc_nll"], tova["doc_nll"], full["doc_nll"]) if r is not tova else None
        d = decode.get(name)
        ratio = f"{d['decode_ratio']:.3f} [{d['decode_ratio_low']:.3f}, {d['decode_ratio_high']:.3f}]" if d else ""
        lines.append(f"| {name} | {r['ppl']:.2f} [{r['ppl_low']:.2f}, {r['ppl_high']:.2f}] | "
                     f"{_fmt(diff) if diff else '–'} | {_fmt(closed, 100, 1, '%') if closed else '–'} | {ratio} |")
    decode_only = [name for name in decode if name not in rows]
    if decode_only:  # score modes that change decoding only: their prefill is the shipped heads' (tests/test_cache.py)
        ref = decode["LoCoCo, shipped heads, last scores"]
        lines += ["", "Score modes that change decoding only (prefill identical to the shipped heads'), on the same 4 "
                  "sequences; Δ decode nll paired against the shipped heads with their own scores and against TOVA:",
                  "", "| policy | decode / segment | Δ decode nll vs shipped (nats) | Δ decode nll vs TOVA (nats) |",
                  "|---|---|---|---|"]
        for name in decode_only:
            d = decode[name]
            lines.append(f"| {name} | {d['decode_ratio']:.3f} [{d['decode_ratio_low']:.3f}, {d['decode_ratio_high']:.3f}] | "
                         f"{_fmt(paired_difference(d['doc_decode_nll'], ref['doc_decode_nll']))} | "
                         f"{_fmt(paired_difference(d['doc_decode_nll'], decode['TOVA']['doc_decode_nll']))} |")
    (HERE / "signals.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    plt = pyplot()
    fig, (ax_tok, ax_cpu) = plt.subplots(1, 2, figsize=(11, 4))
    for signal, label in LABELS.items():
        path = HERE / signal / "metrics.jsonl"
        if not path.exists():
            continue
        metrics = [json.loads(line) for line in path.read_text().splitlines()]
        evals = [m for m in metrics if "heldout_ppl" in m]
        seconds, elapsed = 0.0, {}
        for m in metrics:
            seconds += m["tokens_seen"] / max(m["step"], 1) / m["tokens_per_s"]
            elapsed[m["step"]] = seconds
        ax_tok.plot([m["tokens_seen"] for m in evals], [m["heldout_ppl"] for m in evals], "o-", label=label)
        ax_cpu.plot([elapsed[m["step"]] / 60 for m in evals], [m["heldout_ppl"] for m in evals], "o-", label=label)
    for ax, xlabel in ((ax_tok, "training tokens"), (ax_cpu, "training minutes (1 CPU thread, shared machine)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out ppl (one 4K sequence, in training)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "curves.png", dpi=120)
    plt.close(fig)
    _plot_gap(plt, base)


def _training_cost(signal: str) -> tuple[float, float] | None:
    """(tokens trained, CPU minutes) of a variant's run, from its metrics.jsonl (one thread)."""
    path = HERE / signal / "metrics.jsonl"
    if not path.exists():
        return None
    metrics = [json.loads(line) for line in path.read_text().splitlines()]
    minutes = sum(m["tokens_seen"] / m["step"] / m["tokens_per_s"] for m in metrics) / 60
    return metrics[-1]["tokens_seen"], minutes


def _plot_gap(plt, base: dict) -> None:
    """gap.png: share of the TOVA-to-full gap closed on the 11 sequences, against tokens and CPU minutes."""
    full, tova = base["full"], base["tova"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for signal, label in LABELS.items():
        records = _records(HERE / f"ppl_{signal}.json")
        cost = _training_cost(signal)
        if not records or cost is None:
            continue
        mean, low, high = gap_closed(records[0]["doc_nll"], tova["doc_nll"], full["doc_nll"])
        for ax, x in zip(axes, cost, strict=True):
            ax.errorbar([x], [100 * mean], yerr=[[100 * (mean - low)], [100 * (high - mean)]], fmt="o", capsize=4,
                        label=label)
    shipped = gap_closed(base["lococo"]["doc_nll"], tova["doc_nll"], full["doc_nll"])[0]
    for ax, xlabel in zip(axes, ("training tokens", "training minutes (1 CPU thread, shared machine)"), strict=True):
        ax.axhline(0, color="grey", lw=0.8)
        ax.axhline(100 * shipped, color="tab:green", ls="--", lw=0.8, label="shipped heads (574K tokens, other recipe)")
        ax.axhline(50, color="tab:red", ls=":", lw=0.8, label="issue 13 target (50%)")
        ax.set_xlim(left=0)
        ax.set_xlabel(xlabel)
    axes[0].set_ylabel("gap TOVA -> full closed, % (11 seqs, 95% CI)")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "gap.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
