#!/usr/bin/env bash
# Decode fidelity after 8K tokens at M = 512 (issue 13, item 3; issue 12's decode table at M = 512), the 4 sequences
# and protocol of reports/decode.json: TOVA and the shipped M = 512 heads as shipped ("last" scores, mixing in
# decoding), then the same heads folding as TOVA does in decoding ("hybrid" scores, mix_in_decoding false).
#
#   bash reports/signals/run_decode512.sh      # ~40 min on one thread
set -euo pipefail
cd "$(dirname "$0")/../.."
COMMON=(--length 8192 --decode-tokens 256 --num-docs 4 --mem-size 512 --threads 1 --seed 0 --no-progress)
lococo eval decode "${COMMON[@]}" --policy tova lococo --heads shipped --output reports/signals/decode512.json
HEADS=runs/signals-shipped512-hybrid-select/heads
rm -rf "$HEADS"; mkdir -p "$(dirname "$HEADS")"
cp -r src/lococo/compressor/pretrained/smollm2-135m-m512 "$HEADS"
python -c "import json, sys; p = sys.argv[1]; d = json.load(open(p))
d['config'].update(score_mode='hybrid', mix_in_decoding=False); json.dump(d, open(p, 'w'), indent=2)" "$HEADS/lococo_config.json"
lococo eval decode "${COMMON[@]}" --policy lococo --heads "$HEADS" --output reports/signals/decode512_hybrid-select.json
