#!/usr/bin/env bash
# Context extension of the reference model (native 8K) to 32K tokens at constant memory (issue #7):
# linear positional interpolation (factor 4) + LoRA (r 8, alpha 16, q/k/v/o) + embeddings and norms
# + LoCoCo heads with M = 512 slots, B = 512, trained on 32K-token sequences of the bundled training split.
#
#   bash reports/extension/run_extension.sh train     # CPU budget: 5 steps of 32K tokens, ~45 min, 1 thread
#   bash reports/extension/run_extension.sh memory    # training peak RSS at 8K / 16K / 32K, ~15 min
#   bash reports/extension/run_extension.sh eval-base       # held-out perplexity at 8K / 16K / 32K of the
#                                                           # base model: full cache and shipped heads, ~20 min
#   bash reports/extension/run_extension.sh eval-extended   # the same for the extended model, ~10 min
#   bash reports/extension/run_extension.sh eval-untrained-yarn  # YaRN x4 + shipped heads, no training, ~10 min
#
# Every step resumes (--resume; the grids skip finished cells). bf16 model on 1 CPU thread throughout.
# The heads start from the shipped M = 512 heads (trained on the base model, reports/training/m512);
# the LoRA learning rate is 2e-4 (4x the paper's 5e-5) because the budget allows only 5 optimiser steps.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=reports/extension
EVAL=(--dtype bfloat16 --length 8192 16384 32768 --segment-size 512 --limit-docs 1 --threads "${THREADS:-1}" --no-progress
      --seed 0)

case "${1:-}" in
    train)
        lococo train --dtype bfloat16 --extend-to 32768 --mem-size 512 --n-segments 64 --tbptt 1 \
            --grad-accum 1 --max-steps 5 --lr-lora 2e-4 --init-heads src/lococo/pretrained/smollm2-135m-m512 \
            --save-every 1 --keep-last 2 --threads 1 --resume --output-dir runs/ext32k
        cp runs/ext32k/metrics.jsonl "$OUT/metrics.jsonl" ;;
    memory)
        python benchmarks/train_memory.py --extend-to 32768 --mem-size 512 --modes lococo --dtype bfloat16 \
            --length 8192 16384 32768 --threads 1 --output "$OUT/train_memory.json" ;;
    eval-base)
        # the base model: full cache, and the shipped M = 512 heads (no extension)
        lococo eval ppl --policy full lococo --mem-size 512 --heads shipped "${EVAL[@]}" --output "$OUT/ppl_base.json" ;;
    eval-extended)
        # the extended model (RoPE x4 + LoRA + embeddings/norms) with its own M = 512 heads
        lococo eval ppl --policy lococo --mem-size 512 --extension runs/ext32k/extended "${EVAL[@]}" \
            --output "$OUT/ppl_extended.json" ;;
    eval-untrained-yarn)
        python reports/extension/make_untrained_extension.py --rope-scaling yarn --output runs/yarn32k_untrained
        lococo eval ppl --policy lococo --mem-size 512 --extension runs/yarn32k_untrained "${EVAL[@]}" \
            --output "$OUT/ppl_untrained_yarn.json" ;;
    *)
        echo "usage: $0 train|memory|eval-base|eval-extended|eval-untrained-yarn" >&2; exit 2 ;;
esac
