"""Train heads on a tiny random Llama (used by tests/test_training.py, also under ``accelerate launch``).

    python tests/train_tiny.py OUT_DIR --grad-accum 4
    accelerate launch --multi_gpu --num_processes 2 tests/train_tiny.py OUT_DIR --grad-accum 2  # CPU, gloo
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import build_model, tiny_llama_config  # noqa: E402
from lococo.training.config import TrainConfig  # noqa: E402
from lococo.training.loop import train_heads  # noqa: E402


def tiny_rows(n: int = 32, width: int = 64) -> torch.Tensor:
    return torch.randint(0, 128, (n, width), generator=torch.Generator().manual_seed(1))


def tiny_config(out_dir, **overrides) -> TrainConfig:
    base = dict(output_dir=str(out_dir), mem_size=8, segment_size=16, n_segments=4, buffer=2, kernel_size=3,
                grad_accum=2, max_steps=6, save_every=2, keep_last=2, save_dtype=None)
    return TrainConfig(**{**base, **overrides})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = build_model(tiny_llama_config())
    train_heads(model, tiny_rows(), tiny_config(args.out_dir, grad_accum=args.grad_accum, max_steps=args.max_steps))
