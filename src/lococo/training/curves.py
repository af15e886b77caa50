"""The training curve: loss (and held-out perplexity when logged) against tokens trained, as a PNG."""

from __future__ import annotations

import json
from pathlib import Path

SMOOTH = 5
"""Steps in the moving mean of the training loss drawn over the per-step values."""


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a ``metrics.jsonl`` written by the training loop."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_metrics(path: str | Path, png: str | Path, title: str = "LoCoCo heads training") -> Path:
    """Plot ``metrics.jsonl`` at ``path`` into ``png``; returns the PNG path."""
    from ..evaluation.grid import pyplot

    records = read_metrics(path)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    tokens = [r["tokens_seen"] for r in records]
    losses = [r["loss"] for r in records]
    ax.plot(tokens, losses, marker=".", alpha=0.4, label="training loss (per step)")
    if len(losses) >= 2 * SMOOTH:  # every step sees other documents: show the trend too
        mean = [sum(losses[i - SMOOTH + 1 : i + 1]) / SMOOTH for i in range(SMOOTH - 1, len(losses))]
        ax.plot(tokens[SMOOTH - 1 :], mean, color="tab:blue", label=f"mean of the last {SMOOTH} steps")
    ax.set_xlabel("tokens trained")
    ax.set_ylabel("layer reconstruction error" if "layer" in records[0] else "next-token loss")
    held = [(r["tokens_seen"], r["heldout_ppl"]) for r in records if "heldout_ppl" in r]
    if held:
        twin = ax.twinx()
        twin.plot(*zip(*held, strict=True), color="tab:red", marker="o", label="held-out perplexity")
        twin.set_ylabel("held-out perplexity")
        twin.legend(loc="upper center", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return Path(png)
