"""Untrained probes of what a fixed memory could keep beyond TOVA's selection (issue #13).

    python reports/probes/probe.py VARIANT ... [--docs 4] [--output reports/probes/probe.jsonl]
    python reports/probes/probe.py --summary        # probe.jsonl -> probe.md, paired with the probe's own tova run

Variants (every one keeps 30 x 128 slots in all, M = 128 on average, TOVA's ranking):
  tova            TOVA itself, as registered (the reference every variant is paired with).
  g<G>-b<B>-v|kv  merging: TOVA keeps its M tokens and every evicted token is merged into the kept slots, softly
                  assigned by key cosine similarity (softmax over kept slots of B * cos) with weight G:
                  ``slot = (slot + G * sum_j p_j x_j) / (1 + G * sum_j p_j)``, values only (v) or keys and values
                  (kv): the anchored merge of D2O / CaM. If no G and B beat selection, a convex mixture of stored
                  tokens has little to add on this model, whatever a convolution learns.
  budget-<lo>-<hi>  per-layer memory sizes in [lo, hi], chosen on training text (never the held-out split): the
                  attention the last 512 queries of a 4K-token training sequence pay to the earlier tokens, and the
                  share of it that the best m of those tokens would hold, per layer; slots are then given, 16 at a
                  time, where they hold the most attention (greedy; the per-layer curves are concave).
  pyramid         PyramidKV's shape: sizes falling linearly from layer 0 to the last layer.
  tova-abs        TOVA with absolute positions (the reference of the summary variants; the others re-index).
  sum<K>[-nobias][-L<i,j,..>]  summary slots: TOVA keeps M - K tokens and every evicted token is added to one of K
                  running means of keys and values (nearest by key cosine; the first evicted tokens seed them in
                  K contiguous chunks), attended with a log-mass bias log(n) for the n tokens a summary stands
                  for (proportional attention: one slot weighs as much as its tokens would, if their logits were
                  equal); -nobias: weight of one token; -L: only in those layers. Absolute positions (a mean of keys
                  at different positions has no single position to re-index). The bias is added to the mask by an
                  attention function registered in transformers' AttentionInterface around lococo's.
  oracle-head|layer  a ceiling for selection: before each segment is read, the same segment is first read on a
                  copy of the cache that does not compress, and the M slots kept are those the segment's own
                  queries attend to most (per KV head, or summed over the layer's heads as TOVA ranks). No
                  heuristic that ranks from the past can know this; if it closes little of the gap, no selection
                  can close much more at this M.

Sequences: the first ``--docs`` of reports/ppl_docs16.json's 11 held-out 8K sequences (its TOVA and full-cache
per-document losses are the references), 512-token segments, fp32, one thread. Each variant appends one JSON
line; variants already in the output are skipped (resumable).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import lococo
from lococo.data import load_texts, tokenize_documents
from lococo.evaluation.perplexity import document_windows, perplexity, score_tokens
from lococo.evaluation.stats import gap_closed, paired_difference
from lococo.policies.base import Folded, complement_in_order, gather_slots, index_mask, topk_in_order
from lococo.policies.baselines import TopScorePolicy, TOVAPolicy

SLOTS_PER_LAYER = 128
STEP = 16
CALIBRATION_SIZES = (32, 64, 128, 256, 512)


class MergingTOVA(TOVAPolicy):
    """TOVA's selection, with the evicted tokens merged into the kept slots they resemble."""

    def __init__(self, mem_size: int, buffer: int, gamma: float, beta: float, merge_keys: bool) -> None:
        super().__init__(mem_size, buffer)
        self.gamma, self.beta, self.merge_keys = gamma, beta, merge_keys

    def compress(self, keys, values, scores, valid):
        if valid is not None:
            raise NotImplementedError("the probe reads unpadded sequences only")
        length = keys.shape[2]
        idx = topk_in_order(self.ranking(scores, valid), self.mem_size)
        kept_k, kept_v = gather_slots(keys, idx), gather_slots(values, idx)
        rest = complement_in_order(index_mask(idx, length), length - self.mem_size)
        rest_k, rest_v = gather_slots(keys, rest), gather_slots(values, rest)
        sim = F.normalize(rest_k.float(), dim=-1) @ F.normalize(kept_k.float(), dim=-1).transpose(-1, -2)
        weight = self.gamma * (self.beta * sim).softmax(-1)  # [b, h, R, M]: each evicted token's share per slot
        mass = 1.0 + weight.sum(-2).unsqueeze(-1)  # [b, h, M, 1]
        new_v = ((kept_v.float() + weight.transpose(-1, -2) @ rest_v.float()) / mass).to(values.dtype)
        new_k = kept_k
        if self.merge_keys:
            new_k = ((kept_k.float() + weight.transpose(-1, -2) @ rest_k.float()) / mass).to(keys.dtype)
        return Folded(new_k, new_v, gather_slots(scores, idx), idx)


class BudgetedTOVA(TOVAPolicy):
    """TOVA with its own memory size in each layer."""

    def __init__(self, sizes: list[int], buffer: int = 16) -> None:
        super().__init__(max(sizes), buffer)
        self.sizes = sizes

    def for_layer(self, layer_idx: int) -> TOVAPolicy:
        return TOVAPolicy(self.sizes[layer_idx], self.buffer)


@torch.no_grad()
def uncovered_attention(tokenizer, length: int = 4096, queries: int = 512) -> list[list[float]]:
    """Per layer, for each size in CALIBRATION_SIZES: the attention (mean over the last ``queries`` queries and
    the heads) paid to the earlier tokens that the best ``m`` of them, per KV head, would not hold."""
    model, _ = lococo.load_model(attn_implementation="eager")
    docs = tokenize_documents(load_texts("bundled:all:train", split="train"), tokenizer)
    ids = torch.tensor(next(d for d in docs if len(d) >= length)[:length])[None]
    attentions = model(ids, output_attentions=True).attentions
    kv_heads = model.config.num_key_value_heads
    memory = length - queries
    table = []
    for att in attentions:
        att = att[0, :, -queries:, :memory]  # [heads, q, memory]
        grouped = att.reshape(kv_heads, -1, queries, memory)
        order = grouped.sum(dim=(1, 2)).argsort(-1, descending=True)  # the best tokens per KV head
        total = float(att.sum(-1).mean())
        row = []
        for m in CALIBRATION_SIZES:
            held = torch.stack([grouped[h][..., order[h, :m]].sum(-1).mean() for h in range(kv_heads)]).mean()
            row.append(total - float(held))
        table.append(row)
    return table


def _interpolated(row: list[float], m: int) -> float:
    """Uncovered attention at size m, linear in log2(m) between the calibration sizes."""
    xs = [math.log2(s) for s in CALIBRATION_SIZES]
    x = min(max(math.log2(m), xs[0]), xs[-1])
    for i in range(len(xs) - 1):
        if x <= xs[i + 1]:
            t = (x - xs[i]) / (xs[i + 1] - xs[i])
            return row[i] * (1 - t) + row[i + 1] * t
    return row[-1]


def calibrated_sizes(table: list[list[float]], low: int, high: int) -> list[int]:
    """Greedy: STEP slots at a time to the layer where they hold the most attention, within [low, high]."""
    sizes = [low] * len(table)
    while sum(sizes) < SLOTS_PER_LAYER * len(table):
        gains = [(_interpolated(row, s) - _interpolated(row, s + STEP), i)
                 for i, (row, s) in enumerate(zip(table, sizes, strict=True)) if s + STEP <= high]
        sizes[max(gains)[1]] += STEP
    return sizes


def pyramid_sizes(n_layers: int, top: int = 224) -> list[int]:
    """Linearly falling sizes (multiples of STEP) with the same total as SLOTS_PER_LAYER everywhere."""
    bottom = 2 * SLOTS_PER_LAYER - top
    sizes = [int(round((top + (bottom - top) * i / (n_layers - 1)) / STEP)) * STEP for i in range(n_layers)]
    sizes[-1] += SLOTS_PER_LAYER * n_layers - sum(sizes)
    return sizes


class SummaryTOVA(TOVAPolicy):
    """TOVA keeping ``mem_size - k`` tokens, the evicted ones folded into ``k`` mass-weighted summary slots (first)."""

    def __init__(self, mem_size: int, buffer: int, k: int, layers: set[int] | None, bias: bool) -> None:
        super().__init__(mem_size, buffer)
        self.k, self.layers, self.bias = k, layers, bias
        self.log_mass: torch.Tensor | None = None  # [b, h, k] once the layer holds summaries

    def for_layer(self, layer_idx: int) -> SummaryTOVA:
        own = self.layers is None or layer_idx in self.layers
        return SummaryTOVA(self.mem_size, self.buffer, self.k if own else 0, None, self.bias)

    def compress(self, keys, values, scores, valid):
        if self.k == 0:
            return super().compress(keys, values, scores, valid)
        if valid is not None:
            raise NotImplementedError("the probe reads unpadded sequences only")
        n_sum = 0 if self.log_mass is None else self.k
        tk, tv, ts = keys[:, :, n_sum:], values[:, :, n_sum:], scores[:, :, n_sum:]
        n_tok, keep = tk.shape[2], self.mem_size - self.k
        idx = topk_in_order(self.ranking(ts, None), keep)
        rest = complement_in_order(index_mask(idx, n_tok), n_tok - keep)
        ek, ev = gather_slots(tk, rest).float(), gather_slots(tv, rest).float()
        b, h, r, d = ek.shape
        if n_sum == 0:
            assign = (torch.arange(r) * self.k // r).expand(b, h, r)
            mass, sk, sv = torch.zeros(b, h, self.k), ek.new_zeros(b, h, self.k, d), ev.new_zeros(b, h, self.k, ev.shape[-1])
        else:
            sk, sv, mass = keys[:, :, :n_sum].float(), values[:, :, :n_sum].float(), self.log_mass.exp()
            assign = (F.normalize(ek, dim=-1) @ F.normalize(sk, dim=-1).transpose(-1, -2)).argmax(-1)
        onehot = F.one_hot(assign, self.k).float()  # [b, h, R, k]
        total = mass + onehot.sum(-2)
        denom = total.clamp_min(1e-9)[..., None]
        new_k = (sk * mass[..., None] + onehot.transpose(-1, -2) @ ek) / denom
        new_v = (sv * mass[..., None] + onehot.transpose(-1, -2) @ ev) / denom
        self.log_mass = total.log()  # -inf: an empty summary, masked out
        sources = torch.cat([idx.new_zeros(b, h, self.k), idx + n_sum], dim=-1)
        return Folded(torch.cat([new_k.to(keys.dtype), gather_slots(tk, idx)], 2),
                      torch.cat([new_v.to(values.dtype), gather_slots(tv, idx)], 2),
                      torch.cat([ts.new_zeros(b, h, self.k), gather_slots(ts, idx)], 2), sources)


def mass_biased_attention(module, query, key, value, attention_mask, lococo_layer=None, **kwargs):
    """lococo's sdpa wrapper, with each summary slot's log-mass added to the mask (float) of its query heads."""
    policy = None if lococo_layer is None else lococo_layer.policy
    if isinstance(policy, SummaryTOVA) and policy.log_mass is not None and policy.k and policy.bias:
        b, n_heads, q_len, _ = query.shape
        kv_len = key.shape[2]
        if attention_mask is None:
            visible = (torch.arange(kv_len)[None] <= torch.arange(q_len)[:, None] + kv_len - q_len)[None, None]
        else:
            mask = attention_mask[..., -kv_len:]
            visible = mask if mask.dtype == torch.bool else mask == 0
        additive = torch.where(visible, 0.0, float("-inf")).to(query.dtype).expand(b, n_heads, q_len, kv_len).clone()
        bias = policy.log_mass.repeat_interleave(n_heads // policy.log_mass.shape[1], dim=1)
        additive[..., : policy.k] += bias[:, :, None, :].to(query.dtype)
        attention_mask = additive
    return ALL_ATTENTION_FUNCTIONS["lococo_sdpa"](module, query, key, value, attention_mask,
                                                  lococo_layer=lococo_layer, **kwargs)


def use_mass_biased_attention(model) -> None:
    lococo.make_cache(model, "tova")  # switches the model to lococo_sdpa (idempotent)
    AttentionInterface.register("lococo_probe_mass", mass_biased_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register("lococo_probe_mass", ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    model.set_attn_implementation("lococo_probe_mass")


class LookaheadRanking(TopScorePolicy):
    """Top ``mem_size`` by scores the probe writes into each layer before the fold: the next segment's."""

    score_mode = "last"

    def __init__(self, mem_size: int, buffer: int, layer_sum: bool) -> None:
        super().__init__(mem_size, buffer)
        self.layer_sum = layer_sum

    def ranking(self, scores, valid):
        return scores.sum(1, keepdim=True).expand(scores.shape) if self.layer_sum else scores


class _Summing(TopScorePolicy):
    """The look-ahead copy's policy: never compresses, sums the column scores of every query it reads."""

    score_mode = "accumulated"


@torch.no_grad()
def oracle_nll(model, ids: torch.Tensor, policy: LookaheadRanking, segment_size: int = 512) -> torch.Tensor:
    """Per-token losses of ``ids [1, N]`` read with the look-ahead ranking (see the module docstring)."""
    cache = lococo.make_cache(model, policy)
    summing = _Summing(10**9, 0)
    losses, prev = [], None
    for start in range(0, ids.shape[1], segment_size):
        seg = ids[:, start : start + segment_size]
        layers = cache.compressed_layers
        if layers[0].is_initialized and layers[0].stored > policy.mem_size + policy.buffer:
            ahead = cache.fork()
            for layer in ahead.compressed_layers:
                layer.policy, layer.mem_size, layer.scores = summing, summing.mem_size, None
            model(seg, past_key_values=ahead, position_ids=torch.arange(start, start + seg.shape[1])[None])
            for layer, seen_ahead in zip(layers, ahead.compressed_layers, strict=True):
                layer.scores = seen_ahead.scores[..., : layer.stored]
        scored = score_tokens(model, seg, cache, segment_size, prev_logits=prev)
        losses.append(-scored.logprobs.double())
        prev = scored.last_logits
    return torch.cat(losses)


def oracle_perplexity(model, sequences, policy: LookaheadRanking) -> dict:
    doc_nll, tokens = [], 0
    for ids in sequences:
        nll = oracle_nll(model, ids, policy)
        doc_nll.append(float(nll.mean()))
        tokens += nll.numel()
    return {"doc_nll": doc_nll, "tokens": tokens, "ppl": math.exp(sum(doc_nll) / len(doc_nll))}


def build(variant: str, tokenizer, n_layers: int, state: dict) -> tuple[TOVAPolicy, dict]:
    if variant == "tova":
        return TOVAPolicy(SLOTS_PER_LAYER, 16), {}
    if variant == "tova-abs":
        return TOVAPolicy(SLOTS_PER_LAYER, 16), {"positions": "absolute"}
    if variant.startswith("sum"):
        parts = variant.split("-")
        layers = next(({int(i) for i in p[1:].split(",")} for p in parts if p.startswith("L")), None)
        settings = {"summaries": int(parts[0][3:]), "bias": "nobias" not in parts,
                    "layers": None if layers is None else sorted(layers), "positions": "absolute"}
        return SummaryTOVA(SLOTS_PER_LAYER, 16, settings["summaries"], layers, settings["bias"]), settings
    if variant.startswith("oracle-"):
        layer_sum = variant == "oracle-layer"
        return LookaheadRanking(SLOTS_PER_LAYER, 16, layer_sum), {"layer_sum": layer_sum}
    if variant == "pyramid":
        sizes = pyramid_sizes(n_layers)
        return BudgetedTOVA(sizes), {"sizes": sizes}
    if variant.startswith("budget-"):
        _, low, high = variant.split("-")
        if "table" not in state:
            state["table"] = uncovered_attention(tokenizer)
        sizes = calibrated_sizes(state["table"], int(low), int(high))
        return BudgetedTOVA(sizes), {"sizes": sizes}
    gamma, beta, which = variant.split("-")
    settings = {"gamma": float(gamma[1:]), "beta": float(beta[1:]), "merge_keys": which == "kv"}
    return MergingTOVA(SLOTS_PER_LAYER, 16, **settings), settings


def summary(path: Path) -> str:
    """A Markdown table of every variant, paired with the ``tova`` record of the same run (current code)."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    bases = {r.get("positions"): r for r in records if r["variant"] in ("tova", "tova-abs")}
    base = bases[None]
    full = next(r for r in json.loads(Path("reports/ppl_docs16.json").read_text())["records"] if r["policy"] == "full")
    full_nll = full["doc_nll"][: base["docs"]]
    lines = [
        f"# Untrained probes at M = 128 ({base['docs']} held-out 8K sequences, {base['tokens']} tokens)",
        "",
        "`python reports/probes/probe.py --summary` from [probe.jsonl](probe.jsonl). Paired with the `tova` run of",
        "the same script (`tova-abs` for the variants read with absolute positions); negative = fewer nats than TOVA; gap closed = (TOVA - variant) / (TOVA - full), full "
        f"cache ppl {math.exp(sum(full_nll) / len(full_nll)):.3f}. 95% bootstrap intervals over the sequences.",
        "",
        "| variant | ppl | vs TOVA, nats [95% CI] | gap closed [95% CI] | seconds |",
        "|---|---|---|---|---|",
    ]
    for r in records:
        own = bases[r.get("positions")]
        d = paired_difference(r["doc_nll"], own["doc_nll"])
        g = gap_closed(r["doc_nll"], own["doc_nll"], full_nll)
        lines.append(f"| {r['variant']} | {r['ppl']:.3f} | {d[0]:+.4f} [{d[1]:+.4f}, {d[2]:+.4f}] | "
                     f"{g[0]:.1%} [{g[1]:.1%}, {g[2]:.1%}] | {r['seconds']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*")
    parser.add_argument("--summary", action="store_true", help="write probe.md beside the output and stop")
    parser.add_argument("--docs", type=int, default=4)
    parser.add_argument("--output", type=Path, default=Path("reports/probes/probe.jsonl"))
    args = parser.parse_args()
    if args.summary:
        args.output.with_suffix(".md").write_text(summary(args.output))
        return
    torch.set_num_threads(1)
    model, tokenizer = lococo.load_model()
    token_lists = tokenize_documents(load_texts(None, split="heldout"), tokenizer)
    sequences = document_windows(token_lists, 8192, args.docs, 1)[0]
    reference = json.loads(Path("reports/ppl_docs16.json").read_text())["records"]
    tova = next(r for r in reference if r["policy"] == "tova")["doc_nll"][: args.docs]
    full = next(r for r in reference if r["policy"] == "full")["doc_nll"][: args.docs]
    done = set()
    if args.output.exists():
        done = {json.loads(line)["variant"] for line in args.output.read_text().splitlines() if line.strip()}
    state: dict = {}
    for variant in args.variants:
        if variant in done:
            continue
        policy, settings = build(variant, tokenizer, model.config.num_hidden_layers, state)
        start = time.time()
        if isinstance(policy, LookaheadRanking):
            result = oracle_perplexity(model, sequences, policy)
        else:
            absolute = settings.get("positions") == "absolute"
            if isinstance(policy, SummaryTOVA):
                use_mass_biased_attention(model)

            def make(p=policy, reindex=None if not absolute else False):
                return lococo.make_cache(model, p, reindex_positions=reindex)

            result = perplexity(model, sequences, make, 512, progress=False)
        delta = paired_difference(result["doc_nll"], tova)
        gap = (sum(tova) - sum(result["doc_nll"])) / (sum(tova) - sum(full))
        record = {"variant": variant, **settings, "docs": len(sequences), "tokens": result["tokens"],
                  "ppl": result["ppl"], "doc_nll": result["doc_nll"], "vs_tova_nats": delta,
                  "gap_closed": gap, "seconds": round(time.time() - start)}
        with args.output.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        print(f"{variant}: ppl {result['ppl']:.3f}, vs TOVA {delta[0]:+.4f} [{delta[1]:+.4f}, {delta[2]:+.4f}] "
              f"nats, gap closed {gap:.1%}, {record['seconds']} s", flush=True)


if __name__ == "__main__":
    main()
