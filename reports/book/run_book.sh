#!/usr/bin/env bash
# A whole book at constant memory (issue #14, item 2): 128K tokens of held-out text (essays, then plays) read by
# `lococo generate` and `lococo eval ppl` on this 2-core CPU, their peak RSS against the same commands at 8K,
# and the loss by position bucket of every policy at 128K.
#
#   bash reports/book/run_book.sh rss    # peak RSS of generate and eval ppl, 8K vs 128K tokens, LoCoCo M = 128  ~25 min
#   bash reports/book/run_book.sh ppl    # bucketed perplexity at 128K, DOCS sequences (1), M = 128         ~55 min
#   bash reports/book/run_book.sh full   # the full cache as far as this budget goes: 32K, 2 sequences            ~15 min
#   bash reports/book/run_book.sh diagnose  # LoCoCo with lambda = 0, and TOVA, with absolute positions at 128K   ~45 min
#   bash reports/book/run_book.sh clamped  # LoCoCo and TOVA with the 'clamped' positions scheme at 128K          ~30 min
#   bash reports/book/run_book.sh clamped-heuristics  # StreamingLLM and SnapKV, 'clamped', at 128K           ~25 min
#   bash reports/book/run_book.sh all
#
# POSITIONS=absolute|reindexed|clamped sets the key positions of the compressing policies (default: each policy's
# own, docs/policies.md: clamped for TOVA and the shipped LoCoCo heads, re-indexed for the other heuristics). DOCS sets the number
# of 128K sequences of the ppl target (default 1; each one is ~11 min per policy on one core). One
# thread per command (OMP_NUM_THREADS=1), so two targets can run side by side on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
WHAT="${1:-all}"
POS_ARGS=(${POSITIONS:+--positions "$POSITIONS"})
DOCS="${DOCS:-1}"
export OMP_NUM_THREADS=1
OUT=reports/book
RUN=(--threads 1 --seed 0 --no-progress --mem-size 128 --heads shipped)

if [[ "$WHAT" == all || "$WHAT" == rss ]]; then
    rm -f "$OUT/peak_rss.jsonl"
    for n in 8192 131072; do
        python "$OUT/book_text.py" "$n" "runs/book/book_$n.txt"
        python "$OUT/peak_rss.py" "$OUT/peak_rss.jsonl" "generate $n" -- lococo generate --prompt-file \
            "runs/book/book_$n.txt" --max-new-tokens 32 --no-progress --no-stream "${POS_ARGS[@]}"
        python "$OUT/peak_rss.py" "$OUT/peak_rss.jsonl" "eval ppl $n" -- lococo eval ppl --length "$n" \
            --policy lococo --num-docs 1 "${POS_ARGS[@]}" "${RUN[@]}" --output "runs/book/ppl_rss_$n.json"
    done
fi

if [[ "$WHAT" == all || "$WHAT" == ppl ]]; then
    lococo eval ppl --length 131072 --policy window streaming tova snapkv lococo --num-docs "$DOCS" \
        "${POS_ARGS[@]}" "${RUN[@]}" --output "$OUT/ppl_128k.json"
fi

if [[ "$WHAT" == diagnose ]]; then
    # Why LoCoCo falls behind past 32K (~45 min): the shipped M = 128 heads with lambda = 0 in every layer
    # (selection only: is it the mixing?) and TOVA with absolute positions (is it the positions?), at 128K.
    rm -rf runs/m128_sel && mkdir -p runs/m128_sel
    cp src/lococo/compressor/pretrained/smollm2-135m-m128/* runs/m128_sel/
    python reports/training/exact_zero_lambda.py runs/m128_sel --below 1
    lococo eval ppl --length 131072 --policy lococo --num-docs "$DOCS" --threads 1 --seed 0 --no-progress \
        --mem-size 128 --heads runs/m128_sel --output "$OUT/ppl_128k_select.json"
    lococo eval ppl --length 131072 --policy tova --positions absolute --num-docs "$DOCS" --threads 1 --seed 0 \
        --no-progress --mem-size 128 --output "$OUT/ppl_128k_tova_absolute.json"
fi

if [[ "$WHAT" == clamped ]]; then
    # The 'clamped' positions scheme (absolute within the model's length, far slots pinned below it), 128K  ~30 min
    lococo eval ppl --length 131072 --policy lococo tova --positions clamped --num-docs "$DOCS" "${RUN[@]}" \
        --output "$OUT/ppl_128k_clamped.json"
fi

if [[ "$WHAT" == clamped-heuristics ]]; then
    lococo eval ppl --length 131072 --policy streaming snapkv --positions clamped --num-docs "$DOCS" "${RUN[@]}" \
        --output "$OUT/ppl_128k_clamped_heuristics.json"
fi

if [[ "$WHAT" == all || "$WHAT" == full ]]; then
    # 32K tokens of the same two sequences' documents would need the same windows; --length 32768 takes the first
    # two 32K sequences of the split instead (the first of them is the start of the first 128K sequence).
    lococo eval ppl --length 32768 --policy full --num-docs 2 "${RUN[@]}" --output "$OUT/ppl_full_32k.json"
fi
