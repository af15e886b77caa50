#!/usr/bin/env bash
# LoCoCo heads trained with positions re-indexed inside the cache (issue 13): do they keep LoCoCo level with the
# heuristics past the 32K tokens where the shipped (absolute-position) heads fall behind? Each evaluation reads
# the same held-out sequences as the committed report it is compared with, so differences are paired.
#
#   bash reports/training/train_shipped_heads.sh m128r   # train: the shipped M = 128 heads fine-tuned re-indexed
#   bash reports/reindexed_heads/run.sh ppl-8k            # 8K, the 11 sequences of reports/ppl_docs16.json  ~8 min
#   bash reports/reindexed_heads/run.sh ppl-32k           # 32K, the 4 sequences of reports/positions/       ~11 min
#   bash reports/reindexed_heads/run.sh ppl-128k          # 128K, the sequence of reports/book/ppl_128k.json ~15 min
#   bash reports/reindexed_heads/run.sh decode            # decode fidelity after 8K, as reports/decode.json  ~6 min
#   bash reports/reindexed_heads/run.sh summary           # README.md's tables from all of the above
#
# HEADS (default runs/m128r/heads) names the heads to evaluate. One thread per command, so two can run side by
# side on 2 cores. Grids resume where they stopped.
set -euo pipefail
cd "$(dirname "$0")/../.."
WHAT="${1:-all}"
HEADS="${HEADS:-runs/m128r/heads}"
OUT=reports/reindexed_heads
export OMP_NUM_THREADS=1
RUN=(--policy lococo --mem-size 128 --heads "$HEADS" --threads 1 --seed 0 --no-progress)

if [[ "$WHAT" == all || "$WHAT" == ppl-8k ]]; then
    lococo eval ppl --length 8192 --num-docs 16 "${RUN[@]}" --output "$OUT/ppl_8k.json"
fi
if [[ "$WHAT" == all || "$WHAT" == ppl-32k ]]; then
    lococo eval ppl --length 32768 --num-docs 4 "${RUN[@]}" --output "$OUT/ppl_32k.json"
fi
if [[ "$WHAT" == all || "$WHAT" == ppl-128k ]]; then
    lococo eval ppl --length 131072 --num-docs 1 "${RUN[@]}" --output "$OUT/ppl_128k.json"
fi
if [[ "$WHAT" == all || "$WHAT" == decode ]]; then
    lococo eval decode --length 8192 --decode-tokens 256 --num-docs 4 "${RUN[@]}" --output "$OUT/decode_8k.json"
fi
if [[ "$WHAT" == all || "$WHAT" == summary ]]; then
    python "$OUT/summarize.py"
fi
