"""The shipped M = 128 heads computing in bf16 instead of fp32 (issue 15: a cheaper convolution).

    python reports/precision/bf16_heads.py make runs/heads_bf16_m128 bfloat16  # the shipped folder, heads in bf16
    python reports/precision/bf16_heads.py make runs/heads_fp32_m128 float32   # ... in fp32
    python reports/precision/bf16_heads.py compare > reports/precision/bf16_heads.md

The weights are stored in bf16 either way; only the precision the convolution runs in changes. ``compare``
pairs, on the same held-out 8K sequences, the bf16 heads (reports/precision/ppl_8k_bf16_heads.json) with the
same heads in fp32 read by the same code (reports/precision/ppl_8k_fp32_heads.json) and with the fp32 run made
before the score pass skipped masked keys (reports/positions/ppl_8k_clamped.json), and quotes the speed files
(benchmarks/results/heads_overhead_shipped*.json). Commands: `bash reports/run_reports.sh heads-bf16`.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "src/lococo/compressor/pretrained/smollm2-135m-m128"
RUNS = {
    "fp32 heads": "reports/precision/ppl_8k_fp32_heads.json",
    "bf16 heads": "reports/precision/ppl_8k_bf16_heads.json",
    "fp32 heads, before the score-pass change": "reports/positions/ppl_8k_clamped.json",
}
SPEED = {"fp32 heads": "benchmarks/results/heads_overhead_shipped.json",
         "bf16 heads": "benchmarks/results/heads_overhead_shipped_bf16.json"}


def make(folder: Path, dtype: str) -> None:
    """A copy of the shipped heads whose config fixes ``dtype`` (theirs, "bfloat16_if_native", follows the CPU)."""
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(SHIPPED, folder)
    config = json.loads((folder / "lococo_config.json").read_text())
    config["config"]["head_dtype"] = dtype
    (folder / "lococo_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def compare() -> None:
    from lococo.evaluation.stats import paired_difference

    runs = {name: json.loads((ROOT / f).read_text())["records"][0] for name, f in RUNS.items()}
    ref = runs["fp32 heads"]
    print("# Shipped M = 128 heads: bf16 against fp32 compute\n")
    print(__doc__.split("\n\n")[2].replace("\n", " ") + "\n")
    print(f"## Perplexity, 8K held-out tokens, {ref['docs']} sequences, clamped positions\n")
    print("| heads | ppl [95%] | this − fp32 heads (nats per token) |")
    print("|---|---|---|")
    for name, r in runs.items():
        diff = "–"
        if r is not ref:
            d, lo, hi = paired_difference(r["doc_nll"], ref["doc_nll"])
            diff = f"{d:+.5f} [{lo:+.5f}, {hi:+.5f}]"
        print(f"| {name} | {r['ppl']:.3f} [{r['ppl_low']:.2f}, {r['ppl_high']:.2f}] | {diff} |")
    print("\n## Speed, 4K tokens, one thread (segments of 512, the window cache and LoCoCo alternating)\n")
    print("| heads | M | overhead over a window cache | conv s per segment |")
    print("|---|---|---|---|")
    for name, f in SPEED.items():
        path = ROOT / f
        if not path.exists():
            continue
        for r in json.loads(path.read_text())["records"]:
            conv = r.get("profile_s_per_segment", {}).get("lococo.conv", 0.0)
            print(f"| {name} | {r['mem_size']} | {r['overhead']:.1%} | {conv:.3f} |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["make"]:
        make(Path(sys.argv[2]), sys.argv[3])
    else:
        compare()
