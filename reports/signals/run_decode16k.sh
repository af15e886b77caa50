#!/usr/bin/env bash
# Decode fidelity after 16K tokens of the shipped M = 128 heads read with "hybrid" scores (issue 13, item 3), on
# the 2 sequences and with the protocol of reports/positions/decode.json (absolute positions, the last 256
# tokens fed one at a time), so that it pairs with that report's LoCoCo ("last" scores), TOVA and SnapKV rows.
#
#   bash reports/signals/run_decode16k.sh     # ~15 min on one thread
set -euo pipefail
cd "$(dirname "$0")/../.."
lococo eval decode --length 16384 --decode-tokens 256 --policy lococo --mem-size 128 --heads shipped --num-docs 2 \
    --positions absolute --threads 1 --seed 0 --no-progress --output reports/signals/decode16k_shipped-hybrid.json
