#!/usr/bin/env bash
# Decode fidelity after 16K tokens of the shipped M = 128 heads under another decoding fold (issue 13, item 3), on
# the 2 sequences and with the protocol of reports/positions/decode.json (absolute positions, the last 256
# tokens fed one at a time), so that it pairs with that report's LoCoCo ("last" scores), TOVA and SnapKV rows.
#
#   bash reports/signals/run_signals.sh decode shipped-hybrid          # makes runs/signals-shipped-hybrid/heads
#   bash reports/signals/run_decode16k.sh shipped-hybrid               # ~15 min on one thread
#   bash reports/signals/run_decode16k.sh shipped-hybrid-select
#
# (decode16k_shipped-hybrid.json was made with `--heads shipped` while the shipped config was "hybrid" with
# mixing: the same heads and settings as runs/signals-shipped-hybrid/heads.)
set -euo pipefail
cd "$(dirname "$0")/../.."
VARIANT=${1:?shipped-hybrid or shipped-hybrid-select}
HEADS=runs/signals-$VARIANT/heads
[[ -d "$HEADS" ]] || { echo "no $HEADS: run bash reports/signals/run_signals.sh decode $VARIANT first" >&2; exit 1; }
lococo eval decode --length 16384 --decode-tokens 256 --policy lococo --mem-size 128 --heads "$HEADS" --num-docs 2 \
    --positions absolute --threads 1 --seed 0 --no-progress --output "reports/signals/decode16k_$VARIANT.json"
