#!/usr/bin/env bash
# Lambda report (issue 19, item 1): loss by 4K bucket to 16K and decode/segment fidelity on held-out text,
# M = 128 shipped heads: as stored (unconstrained lambda), clamped, lambda = 0, TOVA, and as lococo loads
# them now (lambda = sigmoid(logit)). The first four run on commit 48ca3c4 (the last one where lambda could
# leave [0, 1]) through a git worktree; `constrained` and `lambda1` (fused slots = conv mixtures only) run on
# this tree. Resumable: rerun to continue.
#   bash reports/lambda/run_lambda_report.sh [before|after|summary|all]   (default all)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
OUT=reports/lambda/fidelity.jsonl
DOCS=${DOCS:-4}
step=${1:-all}
if [[ $step == before || $step == all ]]; then
  wt=${TMPDIR:-/tmp}/lococo-48ca3c4
  [[ -d $wt ]] || git worktree add -f "$wt" 48ca3c4
  PYTHONPATH="$wt/src" "$PY" reports/lambda/fidelity.py --variants shipped clamped lambda0 tova --num-docs "$DOCS" --out "$OUT"
fi
if [[ $step == after || $step == all ]]; then
  "$PY" reports/lambda/fidelity.py --variants constrained lambda1 --num-docs "$DOCS" --out "$OUT"
fi
if [[ $step == summary || $step == all ]]; then
  "$PY" reports/lambda/summarize.py "$OUT" reports/lambda/fidelity
fi
