#!/usr/bin/env bash
# The committed RULER report on the reference model (issue 17, item 4), grown in steps that each fit a CPU session.
#
#   bash reports/ruler/run_report.sh first      # niah_single_1 + vt, 4096, 10 samples, query-agnostic, M = 128:
#                                               # full, streaming, TOVA, SnapKV, LoCoCo (shipped heads)
#   bash reports/ruler/run_report.sh kvpress    # kvpress's StreamingLLM, SnapKV and TOVA presses on the same samples,
#                                               # merged beside ours, and TOVAPress's prefill memory at 4K and 8K
#                                               # -> reports/ruler/ruler_kvpress.json (+ .md, .png)
#
# Done so far: `first` (34 min on one thread, the other core busy). `kvpress` is not run yet.
#
# One thread per command; the grid resumes where it stopped. Grow it with more --task / --length / --samples /
# --setting / --mem-size values (the same samples are kept: a sample depends only on task, length, seed, index).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
OUT=reports/ruler/ruler.json

case "${1:-}" in
    first)
        lococo eval ruler --task niah_single_1 vt --length 4096 --samples 10 --setting query-agnostic \
            --policy full streaming tova snapkv lococo --mem-size 128 --heads shipped --threads 1 --seed 0 \
            --no-progress --output "$OUT" ;;
    kvpress)
        LOCOCO_REPORT=reports/ruler/ruler.json OUT=runs/kvpress-ruler MERGED=reports/ruler/ruler_kvpress.json \
            PRESSES="streaming_llm snapkv tova" MEM_SIZES=128 MEMORY_PRESSES=tova bash reports/ruler/run_kvpress.sh all ;;
    *)
        echo "usage: $0 first|kvpress" >&2; exit 2 ;;
esac
