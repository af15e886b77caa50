#!/usr/bin/env bash
# Reproduce the evaluation reports (perplexity and passkey) on the offline reference model.
#
#   bash reports/run_reports.sh            # both reports
#   bash reports/run_reports.sh ppl        # only perplexity
#   bash reports/run_reports.sh passkey    # only passkey
#
# Both grids are resumable: rerun the same command after an interruption and finished cells are skipped.
# HEADS=DIR evaluates trained LoCoCo heads (default: fresh, untrained heads). DEVICE=cuda for a GPU.
# Rough cost on 2 CPU cores (fp32, otherwise idle machine; 19 cells = full + 9 policies x M in {128, 512}):
#   ppl     8K tokens x 4 sequences per cell              ~ 1.5-2.5 h
#   passkey 1K-8K x 3 depths x 3 keys per cell             ~ 2-3 h
# On one GPU each takes minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

WHAT="${1:-all}"
DEVICE="${DEVICE:-cpu}"
HEADS_ARGS=()
if [[ -n "${HEADS:-}" ]]; then
    HEADS_ARGS=(--heads "$HEADS")
fi

if [[ "$WHAT" == all || "$WHAT" == ppl ]]; then
    # Perplexity at 8K tokens read in 512-token segments, every policy, M in {128, 512}, the bundled held-out split.
    lococo eval ppl --length 8192 --segment-size 512 --mem-size 128 512 --limit-docs 4 \
        --device "$DEVICE" "${HEADS_ARGS[@]}" --seed 0 --output reports/ppl.json
fi

if [[ "$WHAT" == all || "$WHAT" == passkey ]]; then
    # Passkey retrieval up to 8K tokens, every policy, M in {128, 512}.
    lococo eval passkey --length 1024 2048 4096 8192 --depth 0 0.5 1 --trials 3 --segment-size 512 \
        --mem-size 128 512 --device "$DEVICE" "${HEADS_ARGS[@]}" --seed 0 --output reports/passkey.json
fi
