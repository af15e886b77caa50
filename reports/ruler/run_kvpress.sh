#!/usr/bin/env bash
# NVIDIA kvpress side by side with lococo on RULER (issue 17, item 3): kvpress (installed from PyPI in its own
# virtual environment, with the transformers version it requires) answers the same RULER samples, from the same
# token ids, with the same model, keeping the same number of tokens M, and its answers are scored with the same
# metric and written in lococo's RULER report format. See docs/ruler.md, "kvpress side by side".
#
#   bash reports/ruler/run_kvpress.sh venv     # runs/kvpress-venv: CPU torch + kvpress (77 s measured, once)
#   bash reports/ruler/run_kvpress.sh dump     # lococo venv: the samples and their token ids -> $OUT/samples.jsonl
#   bash reports/ruler/run_kvpress.sh run      # kvpress venv: answers -> $OUT/predictions.jsonl (resumes)
#   bash reports/ruler/run_kvpress.sh memory   # kvpress's prefill memory at MEMORY_LENGTHS, one fresh process per
#                                              # press and length -> $OUT/memory_rss.jsonl, $OUT/memory_tensors.jsonl
#   bash reports/ruler/run_kvpress.sh merge    # lococo venv: RULER scores -> $MERGED (+ .md, .png)
#   bash reports/ruler/run_kvpress.sh all      # venv dump run memory merge
#
# Settings (environment variables; the defaults in brackets):
#   LOCOCO_REPORT  a `lococo eval ruler` JSON: the samples are made with its tasks, lengths, samples, seed, settings
#                  and model, and the kvpress records are merged beside its records (checked to be the same samples)
#                  [reports/ruler.json if it exists]
#   TASKS LENGTHS SAMPLES SAMPLE_SEED   override the report's (or dump_samples.py's defaults: RULER's 13 tasks,
#                  4096 8192, 20 samples, seed 42)
#   PRESSES        [streaming_llm snapkv tova knorm expected_attention]; also kvzip (2-3 extra passes over the
#                  context) and full (no press)
#   MEM_SIZES      kept tokens M [128 512]: compression_ratio = 1 - M / context tokens, per sample
#   SETTINGS       [the settings of the samples]
#   MEMORY_LENGTHS [4096 8192]  MEMORY_PRESSES [$PRESSES]  MEMORY_MEM_SIZE [128]  MEMORY_TASK [niah_single_1]
#   OUT [runs/kvpress-ruler]  MERGED [$OUT/ruler_kvpress.json]  THREADS [1]  KVPRESS_VERSION [0.5.5]
#   TORCH_INDEX    as in the Makefile: a pip index for torch (https://download.pytorch.org/whl/cpu for a CPU wheel)
#
# Smoke run (measured on a 2-core CPU machine whose other core was busy, one torch thread, reference model):
#   OUT=/tmp/kvsmoke2 LOCOCO_REPORT=/tmp/kvsmoke/lococo_ruler.json PRESSES="tova snapkv" MEM_SIZES=128 \
#       MEMORY_PRESSES=tova bash reports/ruler/run_kvpress.sh all
#   with /tmp/kvsmoke/lococo_ruler.json from `lococo eval ruler --task niah_single_1 --length 4096 --samples 1
#   --policy full tova --mem-size 128 --setting query-agnostic --threads 1` (58 s):
#     venv    77 s (once: torch 2.13.0+cpu, kvpress 0.5.5, transformers 5.2.0; no nvidia-* package)
#     dump    20 s (RULER's generator for niah_single_1, 1 sample at 4096)
#     run     50 s for 2 presses x 1 sample at 4096 (3799 context tokens): 21 s per answer, nearly all prefill
#     memory  215 s for 1 press at 4096 and 8192 (the samples 20 s; per process, a 1-token answer: 23 s at 4096,
#             55 to 61 s at 8192 with 7549 context tokens)
#     merge   4 s
#   Other presses at 4096: streaming_llm 20 s, knorm 21 s, expected_attention 23 s per answer; kvzip 125 s.
#   A full grid costs about (tasks x lengths x samples x settings x presses x M) answers of about 20 s (4K) to
#   60 s (8K) on one thread: 13 tasks x 2 lengths x 20 samples x 2 settings x 5 presses x 2 M are 20800 answers,
#   many CPU-days; cut it down with TASKS, SAMPLES, PRESSES and MEM_SIZES.
#
# The kvpress environment: kvpress 0.5.5 requires transformers>=4.56,<5.3 (lococo pins 5.23.0), hence its own venv.
# torch is installed first, at lococo's version (constraints.txt), from TORCH_INDEX if given, else from pip's
# configured sources (on the machine this was measured on, a local torch-2.13.0+cpu wheel: download.pytorch.org was
# not reachable); then kvpress with torch pinned to that version, so pip never swaps in a CUDA build. The step fails
# if any nvidia-* package got in. `pip freeze` of the result is kept in runs/kvpress-venv/freeze.txt.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${PYTHON:-python3}
LOCOCO_PY=${LOCOCO_PY:-.venv/bin/python}
KV_VENV=${KV_VENV:-runs/kvpress-venv}
KVPY="$KV_VENV/bin/python"
KVPRESS_VERSION=${KVPRESS_VERSION:-0.5.5}
TORCH_INDEX=${TORCH_INDEX:-}
OUT=${OUT:-runs/kvpress-ruler}
MERGED=${MERGED:-$OUT/ruler_kvpress.json}
THREADS=${THREADS:-1}
PRESSES=${PRESSES:-streaming_llm snapkv tova knorm expected_attention}
MEM_SIZES=${MEM_SIZES:-128 512}
SETTINGS=${SETTINGS:-}
MEMORY_LENGTHS=${MEMORY_LENGTHS:-4096 8192}
MEMORY_PRESSES=${MEMORY_PRESSES:-$PRESSES}
MEMORY_MEM_SIZE=${MEMORY_MEM_SIZE:-128}
MEMORY_TASK=${MEMORY_TASK:-niah_single_1}
if [[ -z "${LOCOCO_REPORT+x}" && -f reports/ruler.json ]]; then LOCOCO_REPORT=reports/ruler.json; fi
LOCOCO_REPORT=${LOCOCO_REPORT:-}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS TOKENIZERS_PARALLELISM=false

step_venv() {
    local stamp="$KV_VENV/.kvpress-$KVPRESS_VERSION-installed"
    [[ -f "$stamp" ]] && return 0
    local torch_version
    torch_version=$(sed -n 's/^torch==//p' constraints.txt)
    [[ -n "$torch_version" ]] || { echo "error: no torch==... line in constraints.txt" >&2; exit 1; }
    "$PYTHON" -m venv "$KV_VENV"
    "$KVPY" -m pip install -q --upgrade pip
    echo "torch==$torch_version" > "$KV_VENV/torch-pin.txt"
    "$KVPY" -m pip install -q -c "$KV_VENV/torch-pin.txt" torch ${TORCH_INDEX:+--index-url "$TORCH_INDEX"}
    "$KVPY" -m pip install -q -c "$KV_VENV/torch-pin.txt" "kvpress==$KVPRESS_VERSION"
    if "$KVPY" -m pip list 2>/dev/null | grep -qi '^nvidia-'; then
        echo "error: CUDA packages were installed into $KV_VENV (nvidia-*); remove it and rerun with" \
             "TORCH_INDEX=https://download.pytorch.org/whl/cpu" >&2
        exit 1
    fi
    "$KVPY" -m pip freeze > "$KV_VENV/freeze.txt"
    "$KVPY" -c "import importlib.metadata as m, torch, transformers; print('kvpress', m.version('kvpress'), \
'transformers', transformers.__version__, 'torch', torch.__version__, 'cuda', torch.version.cuda)"
    touch "$stamp"
}

step_dump() {
    local args=()
    [[ -n "$LOCOCO_REPORT" ]] && args+=(--from-report "$LOCOCO_REPORT")
    [[ -n "${TASKS:-}" ]] && args+=(--task $TASKS)
    [[ -n "${LENGTHS:-}" ]] && args+=(--length $LENGTHS)
    [[ -n "${SAMPLES:-}" ]] && args+=(--samples "$SAMPLES")
    [[ -n "${SAMPLE_SEED:-}" ]] && args+=(--sample-seed "$SAMPLE_SEED")
    [[ -n "$SETTINGS" ]] && args+=(--setting $SETTINGS)
    "$LOCOCO_PY" reports/ruler/dump_samples.py "${args[@]}" --output "$OUT/samples.jsonl"
}

step_run() {
    local args=(--press $PRESSES --mem-size $MEM_SIZES --threads "$THREADS")
    [[ -n "$SETTINGS" ]] && args+=(--setting $SETTINGS)
    "$KVPY" reports/ruler/kvpress_run.py --samples "$OUT/samples.jsonl" "${args[@]}" --output "$OUT/predictions.jsonl"
}

step_memory() {
    # made once (delete it after changing MEMORY_TASK or MEMORY_LENGTHS)
    [[ -f "$OUT/memory_samples.jsonl" ]] || "$LOCOCO_PY" reports/ruler/dump_samples.py --task "$MEMORY_TASK" \
        --length $MEMORY_LENGTHS --samples 1 --setting query-agnostic --output "$OUT/memory_samples.jsonl"
    local length press common
    for length in $MEMORY_LENGTHS; do
        for press in $MEMORY_PRESSES; do
            common=(--samples "$OUT/memory_samples.jsonl" --length "$length" --index 0 --press "$press"
                    --mem-size "$MEMORY_MEM_SIZE" --setting query-agnostic --max-new-tokens 1 --threads "$THREADS")
            "$KVPY" reports/ruler/kvpress_run.py "${common[@]}" --output "$OUT/memory_rss.jsonl"
            "$KVPY" reports/ruler/kvpress_run.py "${common[@]}" --tensor-memory --output "$OUT/memory_tensors.jsonl"
        done
    done
}

step_merge() {
    local args=(--predictions "$OUT/predictions.jsonl" --output "$MERGED")
    [[ -n "$LOCOCO_REPORT" ]] && args+=(--report "$LOCOCO_REPORT")
    local memory=()
    for f in "$OUT/memory_rss.jsonl" "$OUT/memory_tensors.jsonl"; do [[ -f "$f" ]] && memory+=("$f"); done
    [[ ${#memory[@]} -gt 0 ]] && args+=(--memory "${memory[@]}")
    "$LOCOCO_PY" reports/ruler/merge_kvpress.py "${args[@]}"
}

mkdir -p "$OUT"
case "${1:-}" in
    venv|dump|run|memory|merge)
        start=$SECONDS; "step_$1"; echo "$1: $((SECONDS - start)) s" >&2 ;;
    all)
        for step in venv dump run memory merge; do start=$SECONDS; "step_$step"; echo "$step: $((SECONDS - start)) s" >&2; done ;;
    *)
        echo "usage: $0 venv|dump|run|memory|merge|all (settings: environment variables, see the top of $0)" >&2
        exit 2 ;;
esac
