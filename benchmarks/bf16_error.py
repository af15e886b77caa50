"""bf16 error of the compressed cache against the plain model's own bf16 error (issue 19, item 5).

Tiny random Llamas (the test suite's; 5 seeds of weights, heads and inputs), same inputs in fp32 and bf16: max |delta log-prob| of the last position
for the full cache and for LoCoCo with fp32 and bf16 heads. The bound asserted by
tests/test_cache.py::test_bf16_model_stays_close_to_fp32 is 2x the full cache's error + 0.005.

    python benchmarks/bf16_error.py > benchmarks/results/bf16_error.txt
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import lococo  # noqa: E402
from conftest import build_model, tiny_llama_config  # noqa: E402

SMALL = dict(mem_size=16, buffer=4, kernel_size=5)


def logprobs(model, policy, ids):
    kw = {} if policy == "lococo" else dict(mem_size=16, buffer=4)
    with torch.no_grad():
        out = lococo.prefill(model, ids, cache=lococo.make_cache(model, policy, **kw), segment_size=8)
    return out.logits.float().log_softmax(-1)


def errors(head_dtype: str, seed: int) -> tuple[float, float]:
    torch.manual_seed(seed)
    ids = torch.randint(0, 128, (2, 90))
    ref = build_model(tiny_llama_config(), seed=seed)
    lococo.attach(ref, lococo.LoCoCoConfig(**SMALL, head_dtype="float32"))
    for p in ref.lococo.parameters():
        torch.nn.init.normal_(p, std=0.05)
    low = build_model(tiny_llama_config(), seed=seed).to(torch.bfloat16)
    lococo.attach(low, lococo.LoCoCoConfig(**SMALL, head_dtype=head_dtype))
    low.lococo.load_state_dict(ref.lococo.state_dict())
    full = (logprobs(low, "full", ids) - logprobs(ref, "full", ids)).abs().max()
    lcc = (logprobs(low, "lococo", ids) - logprobs(ref, "lococo", ids)).abs().max()
    return float(full), float(lcc)


for head_dtype in ("float32", "bfloat16"):
    for seed in range(5):
        full, lcc = errors(head_dtype, seed)
        print(f"heads {head_dtype}, seed {seed}: max |delta log-prob| bf16 vs fp32: full cache {full:.4f}, "
              f"LoCoCo {lcc:.4f} ({lcc / full:.1f}x)")
