#!/usr/bin/env bash
# Issue "Foundation": the reference model's first-use fetch + convert time (empty cache), then the
# load time from the cache in a new process. Writes benchmarks/results/first_use.txt.
# Usage: bash benchmarks/first_use.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=benchmarks/results/first_use.txt
CACHE=$(mktemp -d)
trap 'rm -rf "$CACHE"' EXIT
mkdir -p benchmarks/results
{
  echo "date: $(date -u +%FT%TZ)  commit: $(git rev-parse --short HEAD)  cpus: $(nproc)"
  start=$(date +%s.%N)
  LOCOCO_CACHE="$CACHE" lococo fetch 2>&1 | grep -v "Loading weights\|Writing model"
  end=$(date +%s.%N)
  echo "first use (fetch + convert model and corpora, empty cache): $(echo "$end - $start" | bc) s wall"
  for i in 1 2 3; do
    LOCOCO_CACHE="$CACHE" python -c "
import time; t = time.perf_counter()
from lococo.models import load_model
load_model()
print(f'load from cache in a new process (run $i): {time.perf_counter() - t:.2f} s (imports included)')
" 2>/dev/null
  done
} | tee "$OUT"
