#!/usr/bin/env bash
# Issue "LoCoCo core", item 8: peak RSS, cache bytes, prefill and decode speed when reading 4K-32K tokens
# with LoCoCo (M = 128 and 512, B = 512) against the full cache. The heads' overhead against a plain window
# cache of the same size is measured by benchmarks/heads_overhead.py. Reference model, fp32, one process per cell.
# Usage: bash benchmarks/core_memory_speed.sh [THREADS]   (~40 min on 1 thread)
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS="${1:-1}"
lococo bench --length 4096 8192 16384 32768 --policy full lococo --mem-size 128 512 \
  --segment-size 512 --decode-tokens 32 --threads "$THREADS" \
  --output benchmarks/results/core_memory_speed.json
