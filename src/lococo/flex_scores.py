"""Column scores without a probability matrix: two passes of PyTorch's ``flex_attention`` (the GPU path).

The blockwise scores of :mod:`lococo.attention` hold one ``[block, L]`` block of probabilities at a time. On a
GPU, ``flex_attention`` (compiled to fused kernels) never writes them at all, and its log-sum-exp gives the
column sums in a second, transposed pass:

1. ``out, lse = flex_attention(Q, K, V)``: the attention output and each query row's ``lse_q``;
2. the keys attend to the queries, with the score ``k . q * scale - lse_q`` (a ``score_mod``) and the mask
   transposed: the log-sum-exp of key ``k``'s row is ``log sum_q exp(s_qk - lse_q) = log sum_q P[q, k]``,
   the column sum itself. The query heads of a KV group are stacked on that pass's key axis, so the sum runs
   over the group's heads too (GQA), and padding queries are masked out of it.

Equal to :func:`lococo.attention.column_scores` within float error (``tests/test_attention.py``), with logit
soft-capping; attention sinks are left to the blockwise path. On a CPU ``flex_attention`` runs unfused (it
materialises the scores), so there the blockwise path stays the default: select this one with
``make_cache(..., score_kernel="flex")`` on a GPU.
"""

from __future__ import annotations

import functools

import torch

from .attention import last_queries


@functools.cache
def _flex(compiled: bool):
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True) if compiled else flex_attention


def _run(query, key, value, scale, mask_mod, score_mod=None):
    """``flex_attention`` with a block mask built from ``mask_mod``; returns (output, lse)."""
    from torch.nn.attention.flex_attention import AuxRequest, create_block_mask

    b, heads, q_len, _ = query.shape
    block_mask = create_block_mask(mask_mod, b, None, q_len, key.shape[2], device=query.device)
    out, aux = _flex(query.device.type == "cuda")(
        query, key, value, score_mod=score_mod, block_mask=block_mask, scale=scale,
        enable_gqa=heads != key.shape[1], return_aux=AuxRequest(lse=True),
    )
    return out, aux.lse


def _capped(softcap: float | None):
    if not softcap:
        return lambda score: score
    return lambda score: torch.tanh(score / softcap) * softcap


def _column_sums(query, key, scale, lse, visible, query_valid, softcap) -> torch.Tensor:
    """Pass 2: ``[b, KV, L]`` sums over the group's queries of ``exp(s_qk - lse_q)``."""
    b, n_heads, q_len, d = query.shape
    kv_heads = key.shape[1]
    stacked = query.reshape(b, kv_heads, (n_heads // kv_heads) * q_len, d)  # the group's heads on one axis
    lse = lse.float().reshape(b, kv_heads, -1)
    real = torch.ones(b, q_len, dtype=torch.bool, device=query.device) if query_valid is None else query_valid
    cap = _capped(softcap)

    def seen_by(batch, head, k_idx, flat_q):
        q_idx = flat_q % q_len
        return visible[batch, q_idx, k_idx] & real[batch, q_idx]

    def minus_lse(score, batch, head, k_idx, flat_q):
        return cap(score) - lse[batch, head, flat_q]

    _, column_lse = _run(key, stacked, stacked, scale, seen_by, minus_lse)
    return column_lse.float().exp()  # a key no query sees: lse -inf, score 0


def flex_attention_with_scores(query, key, value, scaling, visible, query_valid, softcap=None):
    """Attention output ``[b, q, H, dv]`` and column scores ``[b, KV, L]``, as
    :func:`lococo.attention.attention_with_scores`, from two ``flex_attention`` passes. The scores are detached."""
    cap = _capped(softcap)
    out, lse = _run(query, key, value, scaling, lambda batch, head, q_idx, k_idx: visible[batch, q_idx, k_idx],
                    (lambda score, batch, head, q_idx, k_idx: cap(score)) if softcap else None)
    with torch.no_grad():
        scores = _column_sums(query.detach(), key.detach(), scaling, lse.detach(), visible, query_valid, softcap)
    return out.transpose(1, 2).contiguous(), scores


def flex_column_scores(query, key, scaling, visible, query_valid, window=0, softcap=None) -> torch.Tensor:
    """Column scores ``[b, KV, L]`` as :func:`lococo.attention.column_scores` (``window``: the last queries only)."""
    query, visible, query_valid = last_queries(query, visible, query_valid, window)
    with torch.no_grad():
        _, scores = flex_attention_with_scores(query, key, key, scaling, visible, query_valid, softcap)  # output unused
    return scores
