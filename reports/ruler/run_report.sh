#!/usr/bin/env bash
# The committed RULER report on the reference model (issue 17, item 4), grown in steps that each fit a CPU session.
#
#   bash reports/ruler/run_report.sh first      # niah_single_1 + vt, 4096, 10 samples, query-agnostic, M = 128:
#                                               # full, streaming, TOVA, SnapKV, LoCoCo (shipped heads)
#   bash reports/ruler/run_report.sh aware      # the same tasks, samples and policies, query-aware (the question
#                                               # also before the context), M = 128 and 512 -> ruler_aware.json
#   bash reports/ruler/run_report.sh kvpress-aware   # kvpress on those samples -> ruler_aware_kvpress.json
#   bash reports/ruler/run_report.sh agg        # the aggregation and QA tasks (cwe, fwe, qa_1), 4096, 10 samples,
#                                               # query-agnostic, M = 128: full, streaming, TOVA, SnapKV, LoCoCo
#                                               # -> ruler_agg.json: tasks where a compressed cache can keep part
#   bash reports/ruler/run_report.sh kvpress    # kvpress's StreamingLLM, SnapKV and TOVA presses on the same samples,
#                                               # merged beside ours, and TOVAPress's prefill memory at 4K and 8K
#                                               # -> reports/ruler/ruler_kvpress.json (+ .md, .png)
#
# Done so far: `first` (34 min on one thread, the other core busy); `kvpress` (27 min: venv 70 s, samples 52 s,
# 60 answers 1331 s, prefill memory 202 s, merge 4 s, the other core busy); `aware` (71 min of cells);
# `kvpress-aware` (37 min of answers).
#
# One thread per command; a grid resumes where it stopped when rerun with the same command. A command with other
# --task / --length / --samples / --setting / --mem-size values starts its report afresh (the samples are the same:
# a sample depends only on task, length, seed and index), hence one report file per step.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=1
OUT=reports/ruler/ruler.json

case "${1:-}" in
    first)
        lococo eval ruler --task niah_single_1 vt --length 4096 --samples 10 --setting query-agnostic \
            --policy full streaming tova snapkv lococo --mem-size 128 --heads shipped --threads 1 --seed 0 \
            --no-progress --output "$OUT" ;;
    aware)
        lococo eval ruler --task niah_single_1 vt --length 4096 --samples 10 --setting query-aware \
            --policy full streaming tova snapkv lococo --mem-size 128 512 --heads shipped --threads 1 --seed 0 \
            --no-progress --output reports/ruler/ruler_aware.json ;;
    agg)
        lococo eval ruler --task cwe fwe qa_1 --length 4096 --samples 10 --setting query-agnostic \
            --policy full streaming tova snapkv lococo --mem-size 128 --heads shipped --threads 1 --seed 0 \
            --no-progress --output reports/ruler/ruler_agg.json ;;
    kvpress-aware)
        LOCOCO_REPORT=reports/ruler/ruler_aware.json OUT=runs/kvpress-ruler-aware \
            MERGED=reports/ruler/ruler_aware_kvpress.json PRESSES="streaming_llm snapkv tova" MEM_SIZES="128 512"
        export LOCOCO_REPORT OUT MERGED PRESSES MEM_SIZES
        for step in venv dump run merge; do bash reports/ruler/run_kvpress.sh "$step"; done ;;  # memory: `kvpress`
    kvpress)
        LOCOCO_REPORT=reports/ruler/ruler.json OUT=runs/kvpress-ruler MERGED=reports/ruler/ruler_kvpress.json \
            PRESSES="streaming_llm snapkv tova" MEM_SIZES=128 MEMORY_PRESSES=tova bash reports/ruler/run_kvpress.sh all ;;
    *)
        echo "usage: $0 first|aware|agg|kvpress|kvpress-aware" >&2; exit 2 ;;
esac
