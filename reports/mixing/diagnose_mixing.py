"""What the shipped heads' convolution learned: how many stored tokens each fused slot mixes (issue #13).

    python reports/mixing/diagnose_mixing.py > reports/mixing/shipped_m128.txt

Reads 1.5K held-out tokens with the shipped M = 128 heads, then, on the memory the next compression would
fold, computes each layer's mixing weights A = softmax(relu(conv([K; V]))) over the R non-heavy tokens and
reports, per layer: lambda, the effective number of tokens per fused slot (1 / sum(w^2): 1 = one token,
R = a uniform average), and the share of near-uniform slots (effective tokens > 100), which is what a conv
channel whose ReLU output is 0 everywhere gives: an average of every evicted token.
"""

import torch

import lococo
from lococo.compressor.policy import LoCoCoPolicy
from lococo.data import long_text_ids
from lococo.policies.base import complement_in_order, gather_slots, index_mask, masked, topk_in_order


def main() -> None:
    torch.set_num_threads(1)
    model, tokenizer = lococo.load_model()
    policy = LoCoCoPolicy.for_model(model, heads="shipped", mem_size=128)
    cache = lococo.make_cache(model, policy)
    lococo.prefill(model, long_text_ids(tokenizer, 1536), cache=cache, segment_size=512)
    print("layer | lambda | effective tokens per fused slot: median [p10, p90] | near-uniform slots (> 100 tokens)")
    shares = []
    for i, layer in enumerate(cache.layers):
        head = policy.heads.head(i)
        length = layer.keys.shape[2]
        heavy = topk_in_order(masked(layer.scores, None), policy.n_heavy)
        rest = complement_in_order(index_mask(heavy, length), length - policy.n_heavy)
        with torch.no_grad():
            mix = head.mixing_logits(gather_slots(layer.keys, rest), gather_slots(layer.values, rest), None)
            mix = mix.float().softmax(-1)
        eff = 1.0 / (mix**2).sum(-1)
        shares.append(float((eff > 100).float().mean()))
        print(f"{i:5d} | {float(head.lam):.3f} | {eff.median():.1f} [{eff.quantile(0.1):.1f}, {eff.quantile(0.9):.1f}] "
              f"of R = {length - policy.n_heavy} | {shares[-1]:.0%}")
    print(f"all layers: {sum(shares) / len(shares):.1%} of fused slots are near-uniform averages")


if __name__ == "__main__":
    main()
