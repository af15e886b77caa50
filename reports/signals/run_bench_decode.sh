#!/usr/bin/env bash
# Decoding speed after the change of the shipped heads' decoding fold (issue 15, item 3): TOVA and the shipped
# M = 128 heads as shipped now (hybrid scores, selection in decoding: no convolution while decoding), then the same
# heads as they were ("last" scores, mixing), one thread, 8K-token prompt, 64 decoded tokens, one fresh process
# per cell (lococo bench).
#
#   bash reports/signals/run_bench_decode.sh     # ~6 min
set -euo pipefail
cd "$(dirname "$0")/../.."
COMMON=(--length 8192 --mem-size 128 --decode-tokens 64 --threads 1 --seed 0)
lococo bench "${COMMON[@]}" --policy tova lococo --heads shipped --output reports/signals/bench_decode.json
HEADS=runs/signals-shipped-as-before/heads
rm -rf "$HEADS"; mkdir -p "$(dirname "$HEADS")"
cp -r src/lococo/compressor/pretrained/smollm2-135m-m128 "$HEADS"
python -c "import json, sys; p = sys.argv[1]; d = json.load(open(p))
d['config'].update(score_mode='last', mix_in_decoding=True); json.dump(d, open(p, 'w'), indent=2)" "$HEADS/lococo_config.json"
lococo bench "${COMMON[@]}" --policy lococo --heads "$HEADS" --output reports/signals/bench_decode_before.json
