"""Perplexity of long documents read segment by segment through a compressing cache (``lococo eval ppl``).

Each evaluation sequence has exactly ``length`` tokens: a held-out document truncated to ``length``, or
consecutive documents concatenated (in order, each followed by EOS) until ``length`` is reached. The
sequence is fed in segments of B tokens through one cache; the loss covers every position 1..N-1, the
first token of a segment being predicted by the previous segment's last logit. Besides ``ppl`` the loss
is averaged per position bucket ([0, 512), [512, 1K), [1K, 2K), ...): does it keep falling as the
context grows?
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..generation import iter_segments
from .grid import CacheFactory, pyplot, series_label
from .stats import bootstrap_interval, docs_for_width, gap_closed, paired_difference

if TYPE_CHECKING:
    from torch import nn
    from transformers.cache_utils import Cache

FIRST_BUCKET = 512
"""Upper edge of the first position bucket; the next edges double (1K, 2K, 4K, ...)."""


@dataclass
class TokenScores:
    """Log-probabilities of target tokens, whether each was the greedy choice, and the last logits."""

    logprobs: torch.Tensor  # [n_targets], float32
    greedy: torch.Tensor  # [n_targets], bool
    last_logits: torch.Tensor  # [1, vocab]


@torch.no_grad()
def score_tokens(
    model: nn.Module,
    input_ids: torch.Tensor,
    cache: Cache,
    segment_size: int,
    *,
    prev_logits: torch.Tensor | None = None,
    progress: bool = False,
) -> TokenScores:
    """Feed ``input_ids [1, N]`` through ``cache`` in segments and score every token against its prediction.

    The cache may already hold earlier tokens (their count is ``cache.get_seq_length()``); ``prev_logits
    [1, vocab]`` is then the logit of the last of them and predicts ``input_ids[0]``. Without it the first
    token has no prediction, so there are N-1 targets (positions 1..N-1), else N.
    """
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ConfigError(f"score_tokens takes one row [1, N], got shape {tuple(input_ids.shape)}")
    logprobs, greedy = [], []
    device = next(model.parameters()).device
    for start, stop, out in iter_segments(model, input_ids, cache, segment_size, progress=progress, desc="scoring"):
        seg = input_ids[:, start:stop].to(device)
        logits = out.logits[0].float()
        predictors = logits[:-1] if prev_logits is None else torch.cat([prev_logits.float().to(device), logits[:-1]])
        targets = seg[0] if prev_logits is not None else seg[0, 1:]
        logprobs.append(-F.cross_entropy(predictors, targets, reduction="none"))
        greedy.append(predictors.argmax(-1) == targets)
        prev_logits = logits[-1:]
    return TokenScores(torch.cat(logprobs).cpu(), torch.cat(greedy).cpu(), prev_logits)


def bucket_edges(length: int) -> list[int]:
    """Position bucket edges ``[0, 512, 1024, 2048, ...]`` up to and including ``length``."""
    edges = [0]
    edge = FIRST_BUCKET
    while edge < length:
        edges.append(edge)
        edge *= 2
    return edges + [length]


def _size_label(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)


def bucket_label(lo: int, hi: int) -> str:
    """``"512-1K"``: the label of the bucket of positions [lo, hi)."""
    return f"{_size_label(lo)}-{_size_label(hi)}"


def document_windows(
    token_lists: Sequence[Sequence[int]], length: int, limit: int | None = None, windows_per_doc: int = 1
) -> tuple[list[torch.Tensor], list[int]]:
    """Sequences of exactly ``length`` tokens ``[1, length]`` from documents, in order, and the document each
    comes from (the index in ``token_lists`` of the document that completes it).

    A document with at least ``length`` tokens (together with what is still buffered from shorter ones)
    gives up to ``windows_per_doc`` consecutive, non-overlapping windows; shorter documents are concatenated
    until ``length`` is reached. The rest of a document beyond its windows is dropped. At most ``limit``
    sequences. Windows of one document share its group id: intervals resample documents, not windows.
    """
    if windows_per_doc < 1:
        raise ConfigError(f"windows_per_doc must be >= 1, got {windows_per_doc}")
    sequences: list[torch.Tensor] = []
    groups: list[int] = []
    buffer: list[int] = []
    for doc, tokens in enumerate(token_lists):
        buffer.extend(tokens)
        taken = 0
        while len(buffer) >= length and taken < windows_per_doc:
            if limit is not None and len(sequences) >= limit:
                return sequences, groups
            sequences.append(torch.tensor([buffer[:length]], dtype=torch.long))
            groups.append(doc)
            buffer = buffer[length:]
            taken += 1
        if taken:
            buffer = []
    return sequences, groups


def eval_sequences(token_lists: Sequence[Sequence[int]], length: int, limit: int | None = None) -> list[torch.Tensor]:
    """One sequence of ``length`` tokens per document (:func:`document_windows` with one window each)."""
    return document_windows(token_lists, length, limit)[0]


def perplexity(
    model: nn.Module,
    sequences: Sequence[torch.Tensor],
    new_cache: CacheFactory,
    segment_size: int,
    *,
    groups: Sequence[int] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """``ppl``, mean ``nll``, scored ``tokens``, ``docs`` and ``loss_by_bucket`` over ``sequences``.

    Each sequence is read with a fresh cache from ``new_cache()``. Buckets are over the position of the
    predicted token in its sequence; ``doc_loss_by_bucket`` has each sequence's own (paired comparisons per
    bucket). ``groups`` (the document of each sequence, from
    :func:`document_windows`) makes the interval resample documents; it is kept as ``doc_group``.
    """
    if not sequences:
        raise ConfigError("no evaluation sequences: the documents are shorter than the requested length")
    length = max(s.shape[1] for s in sequences)
    edges = bucket_edges(length)
    sums = torch.zeros(len(edges) - 1, dtype=torch.float64)
    counts = torch.zeros(len(edges) - 1, dtype=torch.float64)
    total_nll, total_tokens = 0.0, 0
    doc_nll, doc_buckets = [], []
    for ids in tqdm(sequences, desc="documents", unit="doc", disable=not progress, leave=False):
        losses = -score_tokens(model, ids, new_cache(), segment_size, progress=progress).logprobs.double()
        doc_nll.append(float(losses.mean()))
        positions = torch.arange(1, ids.shape[1])
        bucket = torch.bucketize(positions, torch.tensor(edges[1:-1]), right=True)
        doc_sums = torch.zeros_like(sums).index_add_(0, bucket, losses)
        doc_counts = torch.zeros_like(counts).index_add_(0, bucket, torch.ones_like(losses))
        sums += doc_sums
        counts += doc_counts
        doc_buckets.append({bucket_label(edges[i], edges[i + 1]): float(doc_sums[i] / doc_counts[i])
                            for i in range(len(sums)) if doc_counts[i] > 0})
        total_nll += float(losses.sum())
        total_tokens += losses.numel()
    nll = total_nll / total_tokens
    by_bucket = {
        bucket_label(edges[i], edges[i + 1]): float(sums[i] / counts[i]) for i in range(len(sums)) if counts[i] > 0
    }
    _, low, high = bootstrap_interval(doc_nll, groups=groups)
    return {
        "ppl": math.exp(nll),
        "ppl_low": None if low is None else math.exp(low),  # 95% bootstrap interval over documents
        "ppl_high": None if high is None else math.exp(high),
        "nll": nll,
        "tokens": total_tokens,
        "docs": len(sequences),
        "loss_by_bucket": by_bucket,
        "doc_nll": doc_nll,
        "doc_loss_by_bucket": doc_buckets,
        **grouping_fields(groups),
    }


def grouping_fields(groups: Sequence[int] | None) -> dict[str, Any]:
    """The record fields that say which document each sequence came from (none without windows)."""
    return {} if groups is None else {"documents": len(set(groups)), "doc_group": list(groups)}


def paired_summary(
    records: list[dict],
    compare_to: str | None = None,
    *,
    values: Callable[[dict], Sequence[float] | None] = lambda r: r.get("doc_nll"),
    title: str = "Paired comparisons",
    measure: str = "Δ nll (nats)",
    ratio: str = "ppl ratio",
    gap: bool = True,
) -> str:
    """Markdown: every policy against a reference on the same documents, per length and M.

    ``values(record)`` gives each document's figure (lower is better; default its mean nll). The reference is
    ``compare_to`` or, by default, the compressing policy that is not learned with the lowest mean figure at
    that length and M. Columns: paired difference of the means (95% bootstrap interval over documents),
    ``exp`` of it (a perplexity ratio for nll), and with ``gap`` for learned policies (LoCoCo) the share of the
    reference's nll gap to the full cache that they close.
    """
    from ..policies import policy_class

    def kind(r: dict) -> str:
        cls = policy_class(r["policy"])
        return "full" if not cls.compresses else "learned" if cls.learned else "heuristic"

    lines = [f"## {title} (same documents; 95% bootstrap intervals over documents)", ""]
    groups: dict[tuple, list[dict]] = {}
    for r in records:  # policies with different position schemes (LoCoCo's default differs) are compared too
        if values(r):
            groups.setdefault((r["length"], r.get("mem_size")), []).append(r)
    rows = []
    for (length, mem), group in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        full = next((r for r in records if kind(r) == "full" and r["length"] == length and r.get("doc_nll")), None)
        others = [r for r in group if kind(r) == "heuristic"]
        ref = next((r for r in group if r["policy"] == compare_to), None) if compare_to else (
            min(others, key=lambda r: float(np.mean(values(r)))) if others else None)
        if ref is None or mem is None:
            continue
        for r in sorted(group, key=lambda r: float(np.mean(values(r)))):
            if r is ref or len(values(r)) != len(values(ref)):
                continue
            doc_groups = r.get("doc_group")
            d = paired_difference(values(r), values(ref), groups=doc_groups)
            closed = ""
            if (gap and kind(r) == "learned" and full is not None and len(full["doc_nll"]) == len(r["doc_nll"])
                    and full["nll"] < ref["nll"]):  # past the model's context the full cache may read worse
                closed = _fmt_interval(gap_closed(r["doc_nll"], ref["doc_nll"], full["doc_nll"], groups=doc_groups),
                                       percent=True)
            n_docs = len(set(doc_groups)) if doc_groups else len(values(r))
            needed = docs_for_width(d[1], d[2], n_docs)
            rows.append(f"| {length} | {mem} | {_with_positions(r)} | {_with_positions(ref)} | "
                        f"{_fmt_interval(d)} | "
                        f"{math.exp(d[0]):.4f} | {n_docs} ({len(values(r))}) | {needed or ''} | {closed} |")
    if not rows:
        return ""
    lines += [f"| length | M | policy | reference | {measure} | {ratio} | docs (sequences) | "
              "docs for 0.5% | gap to full closed |", "|---|---|---|---|---|---|---|---|---|", *rows, "",
              f"*docs for 0.5%*: documents a rerun would need for the interval of {measure.split(' (')[0]} to be "
              "0.005 nats wide (0.5% of perplexity), projected from this interval's width (widths shrink as "
              "1/sqrt(docs))."]
    return "\n".join(lines) + "\n"


def _with_positions(record: dict) -> str:
    return f"{record['policy']} ({record.get('positions') or 'absolute'})"


def _fmt_interval(stat: tuple[float, float | None, float | None], percent: bool = False) -> str:
    mean, low, high = stat
    scale, unit, digits = (100, "%", 1) if percent else (1, "", 4)
    if low is None:
        return f"{mean * scale:+.{digits}f}{unit}"
    return f"{mean * scale:+.{digits}f}{unit} [{low * scale:+.{digits}f}, {high * scale:+.{digits}f}]"


def plot_perplexity(records: list[dict], path: Path) -> None:
    """Perplexity per policy/M (bars at the longest length, or lines against length when there are several
    lengths), and the loss per position bucket at the longest length."""
    plt = pyplot()
    fig, (ax_ppl, ax_bucket) = plt.subplots(1, 2, figsize=(13, 5))
    styles = [(c, ls) for ls in ("-", "--", ":") for c in plt.rcParams["axes.prop_cycle"].by_key()["color"]]
    series: dict[str, list[dict]] = {}
    for r in records:
        series.setdefault(series_label(r), []).append(r)
    longest = max(r["length"] for r in records)
    lengths = {r["length"] for r in records}
    at_longest = sorted((r for r in records if r["length"] == longest), key=lambda r: r["ppl"])
    if len(lengths) == 1:
        ax_ppl.barh([series_label(r) for r in at_longest], [r["ppl"] for r in at_longest], color="tab:blue")
        for i, r in enumerate(at_longest):
            ax_ppl.text(r["ppl"], i, f" {r['ppl']:.2f}", va="center", fontsize=7)
        ax_ppl.invert_yaxis()
        ax_ppl.set_xlabel("perplexity (lower is better)")
        ax_ppl.set_title(f"perplexity at {longest} tokens")
        ax_ppl.tick_params(axis="y", labelsize=7)
    else:
        for (label, rows), (color, style) in zip(sorted(series.items()), styles, strict=False):
            rows = sorted(rows, key=lambda r: r["length"])
            ax_ppl.plot([r["length"] for r in rows], [r["ppl"] for r in rows], marker="o", label=label,
                        color=color, linestyle=style)
        ax_ppl.set_xscale("log", base=2)
        ax_ppl.set_xlabel("sequence length (tokens)")
        ax_ppl.set_ylabel("perplexity")
        ax_ppl.set_title("perplexity")
        ax_ppl.legend(fontsize=7)
    for r, (color, style) in zip(at_longest, styles, strict=False):
        buckets = r["loss_by_bucket"]
        ax_bucket.plot(list(buckets), list(buckets.values()), marker="o", label=series_label(r), color=color,
                       linestyle=style)
    ax_bucket.set_xlabel("position of the predicted token")
    ax_bucket.set_ylabel("mean loss (nats)")
    ax_bucket.set_title(f"loss by position, length {longest}")
    ax_bucket.tick_params(axis="x", rotation=30)
    ax_bucket.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
