"""How fast bf16/fp16 matrix products and head convolutions run on this CPU against fp32.

    python benchmarks/half_precision_cpu.py > benchmarks/results/half_precision_cpu.txt

One thread, medians of 5 runs. On CPUs without AVX512-BF16/AMX (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``
False) bf16 products are emulated; ``lococo.load_model`` warns there, and heads whose config says
``head_dtype="bfloat16_if_native"`` (the shipped ones) stay in fp32 there.
"""

import platform
import statistics
import time

import torch

SHAPES = {"attention/MLP projection [512x576 @ 576x1536]": (512, 576, 1536),
          "LM head, 64 rows [64x576 @ 576x49152]": (64, 576, 49152)}
# One layer's head conv in a prefill compression of the reference model (3 KV heads, head_dim 64, segment 512):
# the M + 512 - M * rho tokens not kept as heavy hitters -> C = M * (1 - rho) fused slots, kernel 21, rho 0.5.
CONVS = {f"head conv, M = {m} [3x128 ch x {512 + m // 2} tokens, kernel 21 -> {m // 2}]": (m // 2, 512 + m // 2)
         for m in (128, 512)}


def median_seconds(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16 {torch.ops.mkldnn._is_mkldnn_bf16_supported()}, "
          f"native fp16 {torch.ops.mkldnn._is_mkldnn_fp16_supported()}; 1 thread, median of 5 (LM head: 1 run)")
    for name, (m, k, n) in SHAPES.items():
        row = {}
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            row[dtype] = median_seconds(lambda a=a, b=b: a @ b, repeats=5 if n < 10000 else 1)
        fp32 = row[torch.float32]
        print(f"{name}: fp32 {fp32 * 1e3:.1f} ms, bf16 {row[torch.bfloat16] * 1e3:.1f} ms "
              f"({row[torch.bfloat16] / fp32:.0f}x), fp16 {row[torch.float16] * 1e3:.1f} ms "
              f"({row[torch.float16] / fp32:.0f}x)")
    for name, (out, tokens) in CONVS.items():
        row = {}
        for dtype in (torch.float32, torch.bfloat16):
            conv = torch.nn.Conv1d(128, out, 21, padding=10).to(dtype)
            x = torch.randn(3, 128, tokens, dtype=dtype)
            with torch.no_grad():
                row[dtype] = median_seconds(lambda conv=conv, x=x: conv(x))
        fp32 = row[torch.float32]
        print(f"{name}: fp32 {fp32 * 1e3:.1f} ms, bf16 {row[torch.bfloat16] * 1e3:.1f} ms "
              f"({row[torch.bfloat16] / fp32:.1f}x)")


if __name__ == "__main__":
    main()
