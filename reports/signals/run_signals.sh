#!/usr/bin/env bash
# Training signals compared at the same token budget (issue #13, item 1): lm (next-token loss) against kl
# (distillation from the same frozen model reading with a full cache), same data, same seed, same recipe.
#
#   bash reports/signals/run_signals.sh train lm     # ~35 min on 1 CPU thread (fp32 model: this CPU has no AVX512-BF16, where bf16 matmuls are ~50x slower)
#   bash reports/signals/run_signals.sh train kl     # ~45 min (one more forward per chunk: the teacher)
#   bash reports/signals/run_signals.sh train query  # lm, slots ranked by TOVA's rule (--score-mode query)
#   bash reports/signals/run_signals.sh train layer  # per-layer reconstruction of attention outputs (no backward
#                                                    # through the model; lococo.training.layerwise), ~30 min
#   bash reports/signals/run_signals.sh train layer-long  # the same for 90 steps (369K tokens), ~90 min
#   bash reports/signals/run_signals.sh eval lm      # 8K perplexity on the 11 held-out sequences of
#   bash reports/signals/run_signals.sh eval kl      # reports/ppl_docs16.json (~15 min each)
#   bash reports/signals/run_signals.sh eval query
#   bash reports/signals/run_signals.sh eval shipped-query   # the shipped heads read with query scores, untrained
#   bash reports/signals/run_signals.sh decode VARIANT       # decode fidelity, reports/decode.json's 4 sequences
#                                                   # (shipped-recent: the shipped heads scored by every query since
#                                                   # the latest compression; in prefill that is what they read;
#                                                   # shipped-hybrid: their own "last" scores, summed over the
#                                                   # layer's heads when they come from one query, in decoding)
#   python reports/signals/summarize.py              # paired comparisons against TOVA, shipped heads, curves
#
# Recipe (both): fresh heads, M = 128, lambda starting at 0.1 (close to exact selection, which is level with
# TOVA, so training starts at the best heuristic instead of below it), sequences of 8 x 512 tokens whose
# last 32 tokens are read one at a time through the decoding path, truncated BPTT over 2 segments, one
# sequence per step, AdamW lr 1e-2 decaying linearly over 30 steps (123K tokens), held-out perplexity of one
# 4K-token held-out sequence every 10 steps. Training runs resume from their last checkpoint when rerun.
# "query" is lm with one change: the slots are ranked by the latest query's attention summed over the layer's
# heads (TOVA's rule, in prefill as in decoding) instead of the column sums of the latest segment, so at
# lambda 0 the heads would keep exactly what TOVA keeps.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=reports/signals
RECIPE=(--mem-size 128 --lambda-init 0.1 --n-segments 8 --decode-tokens 32 --tbptt 2 --grad-accum 1 --lr-heads 1e-2
        --max-steps 30 --eval-every 10 --eval-sequences 1 --save-every 5 --keep-last 2 --seed 0 --dtype float32
        --threads 1 --resume)

case "${1:-}" in
    train)
        case "${2:-}" in
            lm|kl|layer) SIGNAL=(--objective "$2") ;;
            layer-long) SIGNAL=(--objective layer --max-steps 90 --eval-every 30 --save-every 10 --keep-last 9) ;;
            query) SIGNAL=(--objective lm --score-mode query) ;;
            *) echo "usage: $0 train lm|kl|query|layer|layer-long" >&2; exit 2 ;;
        esac
        lococo train "${RECIPE[@]}" "${SIGNAL[@]}" --output-dir "runs/signals-$2"  # the variant's flags win
        mkdir -p "$OUT/$2"
        cp "runs/signals-$2/metrics.jsonl" "$OUT/$2/metrics.jsonl"
        rm -rf "$OUT/$2/heads"; cp -r "runs/signals-$2/heads" "$OUT/$2/heads" ;;
    eval|decode)
        VARIANT=${2:?lm, kl, query, layer, layer-long or shipped-query|recent|hybrid|hybrid-select}
        HEADS="$OUT/$VARIANT/heads"
        if [[ "$VARIANT" == shipped-* ]]; then
            # no training: the shipped M = 128 heads (trained with "last" scores) read with another score mode
            HEADS=runs/signals-$VARIANT/heads; rm -rf "$HEADS"; mkdir -p "$(dirname "$HEADS")"
            cp -r src/lococo/compressor/pretrained/smollm2-135m-m128 "$HEADS"
            # shipped-MODE: score mode MODE, mixing in decoding as the heads were trained;
            # shipped-hybrid-select: "hybrid" with selection only in decoding (what the shipped heads now do)
            MODE=${VARIANT#shipped-}; MIX=True
            [[ "$MODE" == hybrid-select ]] && { MODE=hybrid; MIX=False; }
            python -c "import json, sys; p = sys.argv[1]; d = json.load(open(p))
d['config'].update(score_mode=sys.argv[2], mix_in_decoding=sys.argv[3] == 'True')
json.dump(d, open(p, 'w'), indent=2)" "$HEADS/lococo_config.json" "$MODE" "$MIX"
        fi
        if [[ "$1" == eval ]]; then
            # the same 11 sequences as reports/ppl_docs16.json (full, TOVA, SnapKV, shipped heads), read the same way
            lococo eval ppl --length 8192 --policy lococo --heads "$HEADS" --mem-size 128 \
                --num-docs 16 --device cpu --threads 1 --seed 0 --no-progress --output "$OUT/ppl_$VARIANT.json"
        else
            # the same 4 sequences and protocol as reports/decode.json: 8K tokens, the last 256 one at a time
            lococo eval decode --length 8192 --decode-tokens 256 --num-docs 4 --policy lococo --mem-size 128 \
                --heads "$HEADS" --threads 1 --seed 0 --no-progress --output "$OUT/decode_$VARIANT.json"
        fi ;;
    *)
        echo "usage: $0 train lm|kl|query|layer | eval|decode lm|kl|query|layer|layer-long|shipped-query|shipped-recent|shipped-hybrid|shipped-hybrid-select" >&2; exit 2 ;;
esac
