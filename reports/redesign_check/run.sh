#!/usr/bin/env bash
# Issue 11 acceptance: 8K held-out perplexity of full, tova and lococo (shipped M = 128 heads) before the core
# redesign (commit 1e0852a, lambda already constrained) and after it (this tree), one document, 1 thread.
#   bash reports/redesign_check/run.sh     -> before.{json,md}, after.{json,md} here (compare the ppl columns)
set -euo pipefail
cd "$(dirname "$0")/../.."
ARGS=(eval ppl --policy full tova lococo --heads shipped --mem-size 128 --length 8192 --limit-docs 1 --threads 1 --no-progress)
wt=${TMPDIR:-/tmp}/lococo-1e0852a
[[ -d $wt ]] || git worktree add -f "$wt" 1e0852a
(cd /tmp && PYTHONPATH="$wt/src" "$OLDPWD/.venv/bin/python" -m lococo "${ARGS[@]}" --output "$OLDPWD/reports/redesign_check/before.json")
.venv/bin/python -m lococo "${ARGS[@]}" --output reports/redesign_check/after.json
