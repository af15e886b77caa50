"""Table and plot of reports/lambda/fidelity.jsonl: loss by 4K bucket, nll and decode/segment perplexity ratio.

Means over documents, with a 95% bootstrap interval over documents (10 000 resamples, seeded), and the
paired difference of each variant against TOVA on the same documents.

    python reports/lambda/summarize.py reports/lambda/fidelity.jsonl reports/lambda/fidelity
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from lococo.evaluation.stats import bootstrap_interval

ORDER = ["shipped", "clamped", "constrained", "lambda0", "lambda1", "tova"]
LABELS = {
    "shipped": "LoCoCo, shipped heads as stored (lococo 0.1, lambda unconstrained)",
    "clamped": "LoCoCo, same heads, lambda clamped to [0, 1] at inference (lococo 0.1)",
    "constrained": "LoCoCo, same heads as lococo 0.2 loads them (lambda = sigmoid)",
    "lambda0": "LoCoCo, same heads, lambda = 0 (pure selection)",
    "lambda1": "LoCoCo, same heads, lambda = 1 (fused slots = conv mixtures only)",
    "tova": "TOVA",
}


def interval(values: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95% bootstrap interval over documents (lococo's own, as ``lococo eval ppl`` reports it)."""
    return bootstrap_interval(values)


def fmt(stat: tuple[float, float, float], digits: int = 3) -> str:
    m, lo, hi = stat
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def main(path: Path, stem: Path) -> None:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    by = {}
    for r in records:
        by.setdefault(r["variant"], {})[r["doc"]] = r
    docs = sorted(set.intersection(*(set(d) for d in by.values())))
    variants = [v for v in ORDER if v in by]
    length = records[0]["length"]
    n_buckets = len(records[0]["loss_by_4k"])
    edges = [f"{4 * i}K-{4 * (i + 1)}K" for i in range(n_buckets)]

    def arr(v: str, key: str) -> np.ndarray:
        return np.array([by[v][d][key] for d in docs], dtype=float)

    lines = [
        f"# Lambda in [0, 1]: held-out loss by position and decode fidelity (M = {records[0]['mem_size']})",
        "",
        f"{len(docs)} held-out sequences of {length} tokens ({len(docs) * (length - 1)} scored tokens per variant), "
        "reference model fp32, 512-token segments. Mean over documents with a 95% bootstrap interval over "
        "documents. Decode fidelity: after the first "
        f"{records[0]['decode_at']} tokens, the next {records[0]['decode_tokens']} are fed one at a time "
        "(decoding path) and as one segment; ratio = exp(mean nll decoded - mean nll segment).",
        "",
        "Command: `bash reports/lambda/run_lambda_report.sh` (variants `shipped`, `clamped`, `lambda0` and "
        "`tova` run on commit 48ca3c4, where lambda could still leave [0, 1]; `constrained` and `lambda1` on this tree).",
        "",
        "| variant | " + " | ".join(f"loss {e}" for e in edges) + " | nll | decode / segment ppl |",
        "|---|" + "---|" * (n_buckets + 2),
    ]
    for v in variants:
        buckets = np.array([by[v][d]["loss_by_4k"] for d in docs])
        cells = [fmt(interval(buckets[:, i])) for i in range(n_buckets)]
        cells += [fmt(interval(arr(v, "nll"))), fmt(interval(arr(v, "decode_ratio")))]
        lines.append(f"| {LABELS[v]} | " + " | ".join(cells) + " |")
    if "tova" in by:
        lines += ["", "Paired difference against TOVA on the same documents (negative: keeps more than TOVA):", "",
                  "| variant | " + " | ".join(f"Δloss {e}" for e in edges) + " | Δnll | Δ decode ratio |",
                  "|---|" + "---|" * (n_buckets + 2)]
        tova_b = np.array([by["tova"][d]["loss_by_4k"] for d in docs])
        for v in variants:
            if v == "tova":
                continue
            diff = np.array([by[v][d]["loss_by_4k"] for d in docs]) - tova_b
            cells = [fmt(interval(diff[:, i])) for i in range(n_buckets)]
            cells += [fmt(interval(arr(v, "nll") - arr("tova", "nll"))),
                      fmt(interval(arr(v, "decode_ratio") - arr("tova", "decode_ratio")))]
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_dec) = plt.subplots(1, 2, figsize=(12, 4.5))
    for v in variants:
        buckets = np.array([by[v][d]["loss_by_4k"] for d in docs])
        stats = [interval(buckets[:, i]) for i in range(n_buckets)]
        mean = [s[0] for s in stats]
        ax_loss.errorbar(edges, mean, yerr=[[s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]],
                         marker="o", capsize=3, label=v)
    ax_loss.set_xlabel("position of the predicted token")
    ax_loss.set_ylabel("mean loss (nats), 95% interval over documents")
    ax_loss.set_title(f"held-out loss by position ({len(docs)} docs)")
    ax_loss.legend(fontsize=8)
    stats = [interval(arr(v, "decode_ratio")) for v in variants]
    ax_dec.bar(variants, [s[0] for s in stats], yerr=[[s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]],
               capsize=4, color="tab:blue")
    ax_dec.axhline(1.0, color="gray", linewidth=0.8)
    ax_dec.set_ylim(0.9, max(s[2] for s in stats) + 0.05)
    ax_dec.set_ylabel("decode / segment perplexity")
    ax_dec.set_title("decode fidelity")
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=110)
    plt.close(fig)
    print(stem.with_suffix(".md").read_text())


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
