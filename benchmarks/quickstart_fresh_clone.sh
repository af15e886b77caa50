#!/usr/bin/env bash
# Issue "Foundation": both Quickstart commands from a fresh clone, timed.
# Writes benchmarks/results/quickstart_fresh_clone.txt. Usage: bash benchmarks/quickstart_fresh_clone.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="$PWD/benchmarks/results/quickstart_fresh_clone.txt"
DIR=$(mktemp -d)
git clone -q . "$DIR/lococo"
cd "$DIR/lococo"
{
  echo "date: $(date -u +%FT%TZ)  commit: $(git rev-parse --short HEAD)  cpus: $(nproc)"
  echo "== make test"; start=$(date +%s)
  make test 2>&1 | tail -3
  echo "make test wall: $(( $(date +%s) - start )) s"
  echo "== make demo"; start=$(date +%s)
  make demo 2>&1 | tail -9
  echo "make demo wall: $(( $(date +%s) - start )) s"
} | tee "$OUT"
rm -rf "$DIR"
