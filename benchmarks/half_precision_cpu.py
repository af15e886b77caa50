"""How fast bf16/fp16 matrix products run on this CPU against fp32 (the reference model's layer shapes).

    python benchmarks/half_precision_cpu.py > benchmarks/results/half_precision_cpu.txt

One thread, medians of 5 runs. On CPUs without AVX512-BF16/AMX (``torch.ops.mkldnn._is_mkldnn_bf16_supported()``
False) bf16 products are emulated; ``lococo.load_model`` warns there.
"""

import platform
import statistics
import time

import torch

SHAPES = {"attention/MLP projection [512x576 @ 576x1536]": (512, 576, 1536),
          "LM head, 64 rows [64x576 @ 576x49152]": (64, 576, 49152)}


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


if __name__ == "__main__":
    main()
