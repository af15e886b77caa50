#!/usr/bin/env bash
# Reproduce the evaluation reports on the offline reference model (fp32, CPU).
#
#   bash reports/run_reports.sh            # perplexity and passkey
#   bash reports/run_reports.sh ppl        # only perplexity
#   bash reports/run_reports.sh passkey    # only passkey
#
# Both grids are resumable: rerun the same command after an interruption and finished cells are skipped.
# HEADS=DIR evaluates trained LoCoCo heads (default: fresh, untrained heads). DEVICE=cuda for a GPU.
# THREADS=N sets torch's CPU threads (default 1, so two reports can run side by side on 2 cores).
# The committed reports were made with the settings below, chosen for a 2-core CPU budget:
#   ppl      one 8K-token held-out sequence (the first essays of the held-out split) per cell, 19 cells   ~30 min
#   passkey  4K tokens, needle at depths 0.25 and 0.75, 2 keys, M = 128, 10 cells                       ~15 min
# Larger grids (more sequences, lengths up to 8K+, 5 depths x 5 keys) are the same commands with more values.
set -euo pipefail
cd "$(dirname "$0")/.."

WHAT="${1:-all}"
DEVICE="${DEVICE:-cpu}"
THREADS="${THREADS:-1}"
HEADS_ARGS=()
if [[ -n "${HEADS:-}" ]]; then
    HEADS_ARGS=(--heads "$HEADS")
fi

if [[ "$WHAT" == all || "$WHAT" == ppl ]]; then
    # Perplexity at 8K tokens read in 512-token segments, every policy, M in {128, 512}, bundled held-out split.
    lococo eval ppl --length 8192 --segment-size 512 --mem-size 128 512 --limit-docs 1 --no-progress \
        --device "$DEVICE" --threads "$THREADS" "${HEADS_ARGS[@]}" --seed 0 --output reports/ppl.json
fi

if [[ "$WHAT" == all || "$WHAT" == passkey ]]; then
    # Passkey retrieval at 4K tokens, every policy, M = 128.
    lococo eval passkey --length 4096 --depth 0.25 0.75 --trials 2 --segment-size 512 --mem-size 128 \
        --no-progress --device "$DEVICE" --threads "$THREADS" "${HEADS_ARGS[@]}" --seed 0 \
        --output reports/passkey.json
fi
