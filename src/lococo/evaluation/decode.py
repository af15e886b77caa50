"""Decode fidelity (``lococo eval decode``): what users get from the decoding path, not from segments.

For each evaluation sequence of N tokens, the first N - K are read in segments; then the cache is forked
and the last K tokens are read twice from the same state: as one segment (``segment_nll``), and one token at
a time (``decode_nll``), which is how ``generate`` feeds them: compressions every ``buffer + 1`` tokens with
the scores of a single query. ``ratio = exp(decode_nll - segment_nll)`` per document (1 = decoding keeps
what segments keep), reported as a mean with a 95% bootstrap interval over documents. The same pass also
gives each document's perplexity with the prefix and then the tail read in segments (``doc_nll``, ``ppl``
with its interval): ``lococo eval ppl``'s figure up to where segment boundaries fall (it cuts the whole
sequence from its end), so one read answers both questions. ``decode_tok_s``: tokens per second of the
one-at-a-time pass (a forward per token with its compressions, no sampling).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ConfigError
from .grid import CacheFactory, pyplot, series_label
from .perplexity import grouping_fields, paired_summary, score_tokens
from .stats import bootstrap_interval

if TYPE_CHECKING:
    from torch import nn

DEFAULT_DECODE_TOKENS = 256


def decode_fidelity(
    model: nn.Module,
    sequences: Sequence[torch.Tensor],
    new_cache: CacheFactory,
    segment_size: int,
    decode_tokens: int = DEFAULT_DECODE_TOKENS,
    *,
    groups: Sequence[int] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Decode/segment perplexity ratio over ``sequences`` (each ``[1, N]``, N > ``decode_tokens``); ``groups``
    (the document of each sequence) makes the intervals resample documents."""
    if decode_tokens < 1 or any(s.shape[1] <= decode_tokens for s in sequences):
        raise ConfigError(f"decode_tokens must be >= 1 and shorter than every sequence, got {decode_tokens}")
    seg_nll, dec_nll, doc_nll = [], [], []
    decode_seconds = 0.0
    for ids in tqdm(sequences, desc="documents", unit="doc", disable=not progress, leave=False):
        cache = new_cache()
        prefix = score_tokens(model, ids[:, :-decode_tokens], cache, segment_size)
        window = ids[:, -decode_tokens:]
        start = time.perf_counter()
        decoded = score_tokens(model, window, cache.fork(), 1, prev_logits=prefix.last_logits)
        decode_seconds += time.perf_counter() - start
        segment = score_tokens(model, window, cache, segment_size, prev_logits=prefix.last_logits)
        seg_nll.append(float(-segment.logprobs.double().mean()))
        dec_nll.append(float(-decoded.logprobs.double().mean()))
        doc_nll.append(float(-torch.cat([prefix.logprobs, segment.logprobs], dim=-1).double().mean()))
    ratios = np.exp(np.array(dec_nll) - np.array(seg_nll))
    ratio, low, high = bootstrap_interval(ratios, groups=groups)
    nll, nll_low, nll_high = bootstrap_interval(doc_nll, groups=groups)
    return {
        "ppl": math.exp(nll),
        "ppl_low": math.exp(nll_low) if nll_low is not None else None,
        "ppl_high": math.exp(nll_high) if nll_high is not None else None,
        "nll": nll,
        "doc_nll": doc_nll,
        "decode_ratio": ratio,
        "decode_ratio_low": low,
        "decode_ratio_high": high,
        "segment_ppl": math.exp(float(np.mean(seg_nll))),
        "decode_ppl": math.exp(float(np.mean(dec_nll))),
        "decode_tokens": decode_tokens,
        "decode_tok_s": decode_tokens * len(sequences) / decode_seconds,  # one token per forward, as generate
        "docs": len(sequences),
        "doc_segment_nll": seg_nll,
        "doc_decode_nll": dec_nll,
        **grouping_fields(groups),
    }


def _doc_log_ratio(record: dict) -> list[float] | None:
    """Each document's ``log(decode ppl / segment ppl)``: the nats per token that decoding loses."""
    dec, seg = record.get("doc_decode_nll"), record.get("doc_segment_nll")
    return None if not dec or not seg else [d - s for d, s in zip(dec, seg, strict=True)]


def decode_summary(records: list[dict], compare_to: str | None = None) -> str:
    """Markdown: paired comparisons of decode fidelity (log of the decode/segment ratio, per document), of the
    decoded tokens' own loss and of the whole sequence's perplexity, every policy against ``compare_to``
    (default: the best heuristic) per length and M."""
    fidelity = paired_summary(records, compare_to, values=_doc_log_ratio, title="Decode fidelity, paired",
                              measure="Δ log(decode/segment) (nats)", ratio="ratio of ratios", gap=False)
    decoded = paired_summary(records, compare_to, values=lambda r: r.get("doc_decode_nll"),
                             title="Loss of the decoded tokens, paired", measure="Δ decode nll (nats)",
                             ratio="decode ppl ratio", gap=False)
    whole = paired_summary(records, compare_to, title="Perplexity of the whole sequence, paired")
    return "\n".join(part for part in (fidelity, decoded, whole) if part)


def plot_decode(records: list[dict], path: Path) -> None:
    """Decode/segment perplexity ratio per policy/M (bars with 95% intervals), one panel per length."""
    plt = pyplot()
    lengths = sorted({r["length"] for r in records})
    fig, axes = plt.subplots(1, len(lengths), figsize=(6 * len(lengths), 4.5), squeeze=False)
    for ax, length in zip(axes[0], lengths, strict=True):
        rows = sorted((r for r in records if r["length"] == length), key=lambda r: r["decode_ratio"])
        means = [r["decode_ratio"] for r in rows]
        err = [[r["decode_ratio"] - (r["decode_ratio_low"] or r["decode_ratio"]) for r in rows],
               [(r["decode_ratio_high"] or r["decode_ratio"]) - r["decode_ratio"] for r in rows]]
        ax.barh([series_label(r) for r in rows], means, xerr=err, capsize=3, color="tab:blue")
        ax.axvline(1.0, color="gray", linewidth=0.8)
        ax.set_xlim(min(0.95, min(means) - 0.02), max(m + e for m, e in zip(means, err[1], strict=True)) + 0.05)
        ax.set_xlabel("decode / segment perplexity (1 = decoding keeps what segments keep)")
        ax.set_title(f"decode fidelity after {length} tokens")
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
