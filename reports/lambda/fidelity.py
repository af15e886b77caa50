"""Loss by 4K bucket to 16K tokens and decode/segment fidelity for a few named LoCoCo variants and TOVA.

One record per (document, variant), appended to ``--out`` (JSONL; rerunning skips what is there), so the
grid can be stopped and resumed. Each held-out sequence of ``--length`` tokens is read in 512-token
segments (anchored at the end, as ``lococo eval ppl``). After the first ``--decode-at`` tokens the cache is
forked: one copy reads the next ``--decode-tokens`` tokens as one segment, the other feeds them one at a
time (the decoding path: a compression every buffer + 1 tokens with one query's scores); the ratio of the
two perplexities is the decode fidelity. The first copy then reads on to ``--length`` (so the bucket loss is
that of an ordinary segmented read).

Variants (M = 128, the shipped heads):
  shipped      the heads exactly as stored (before lococo 0.3 lambda could leave [0, 1]);
  clamped      the same heads with lambda clamped to [0, 1] at inference (old ``clamp_lambda``);
  constrained  the heads as lococo loads them now (lambda = sigmoid(logit), old files mapped on load);
  lambda0      the same heads with lambda = 0 (pure top-M selection by the latest forward's scores);
  lambda1      the same heads with lambda = 1 (the fused slots are the conv's mixtures only; lococo >= 0.2);
  tova         the TOVA baseline at the same M.
Only public API is used, so the script runs on older lococo versions too (run_lambda_report.sh uses that
to measure ``shipped`` and ``clamped`` on the commit before the change).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import subprocess
import time
from pathlib import Path

import torch

import lococo
from lococo.data import bundled_documents, tokenize_documents
from lococo.evaluation.perplexity import eval_sequences, score_tokens

BUCKET = 4096


def _set_lambda(model, variant: str) -> None:
    heads = lococo.get_heads(model)
    constrained = all(hasattr(head, "lam_logit") for head in heads.heads.values())
    if constrained != (variant in ("constrained", "lambda0", "lambda1")) and variant != "lambda0":
        raise SystemExit(f"variant {variant!r} needs lococo {'0.1' if variant in ('shipped', 'clamped') else '>= 0.2'}")
    for head in heads.heads.values():
        if variant == "clamped":
            head.clamp_lambda = True
        elif variant == "lambda1":
            head.lam_logit.data.fill_(math.inf)
        elif variant == "lambda0":
            if hasattr(head, "lam_logit"):
                head.lam_logit.data.fill_(-math.inf)
            else:
                head.lam.data.zero_()


def _cache(model, variant: str, mem_size: int):
    if variant == "tova":
        return lococo.make_cache(model, "tova", mem_size=mem_size)
    return lococo.make_cache(model, "lococo")


def _fork(cache):
    """A copy of the cache's tensors that shares its policies (and so the heads)."""
    memo = {id(cache.policy): cache.policy}
    for layer in cache.compressed_layers:
        memo[id(layer.policy)] = layer.policy
    return copy.deepcopy(cache, memo)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", required=True)
    ap.add_argument("--num-docs", type=int, default=4)
    ap.add_argument("--length", type=int, default=16384)
    ap.add_argument("--decode-at", type=int, default=7680)
    ap.add_argument("--decode-tokens", type=int, default=256)
    ap.add_argument("--mem-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    done = set()
    if args.out.exists():
        done = {(r["doc"], r["variant"]) for r in map(json.loads, args.out.read_text().splitlines())}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(lococo.__file__).parent).stdout.strip()
    model, tok = lococo.load_model()
    seqs = eval_sequences(tokenize_documents(bundled_documents("all", "heldout"), tok), args.length, args.num_docs)
    for doc, ids in enumerate(seqs):
        for variant in args.variants:
            if (doc, variant) in done:
                continue
            if variant != "tova":
                lococo.load_heads(model, lococo.shipped_heads(model, args.mem_size), replace=True)
                _set_lambda(model, variant)
            t0 = time.time()
            cache = _cache(model, variant, args.mem_size)
            head = score_tokens(model, ids[:, : args.decode_at], cache, 512)
            window = ids[:, args.decode_at : args.decode_at + args.decode_tokens]
            decode = score_tokens(model, window, _fork(cache), 1, prev_logits=head.last_logits)
            rest = score_tokens(model, ids[:, args.decode_at :], cache, 512, prev_logits=head.last_logits)
            losses = -torch.cat([head.logprobs, rest.logprobs]).double()  # positions 1..N-1
            positions = torch.arange(1, ids.shape[1])
            buckets = [float(losses[(positions >= lo) & (positions < lo + BUCKET)].mean())
                       for lo in range(0, args.length, BUCKET)]
            seg_nll = float(-rest.logprobs[: args.decode_tokens].double().mean())
            dec_nll = float(-decode.logprobs.double().mean())
            record = {
                "doc": doc, "variant": variant, "mem_size": args.mem_size, "length": args.length,
                "loss_by_4k": buckets, "nll": float(losses.mean()),
                "decode_at": args.decode_at, "decode_tokens": args.decode_tokens,
                "segment_nll": seg_nll, "decode_nll": dec_nll, "decode_ratio": math.exp(dec_nll - seg_nll),
                "lococo_commit": commit, "seconds": round(time.time() - t0, 1),
            }
            with args.out.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
