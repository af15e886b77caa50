"""``lococo train``: train LoCoCo heads on a frozen model (one process, or several under accelerate).

    lococo train --mem-size 128 --max-steps 60 --output-dir runs/m128
    accelerate launch --num_processes 2 --cpu -m lococo train ...   # same data as --grad-accum x2
"""

from __future__ import annotations

import argparse
import dataclasses

HELP = "train LoCoCo heads (the model stays frozen)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..commands.cli import add_model_args
    from .config import TrainConfig

    add_model_args(parser)
    parser.add_argument("--data", default="bundled:all:train",
                        help="training text: bundled[:corpus[:split]], a .txt file, a folder, a .jsonl or an HF dataset")
    parser.add_argument("--eval-data", default="bundled:all:heldout", help="held-out text for --eval-every")
    parser.add_argument("--eval-sequences", type=int, default=2, help="held-out sequences for periodic perplexity")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    defaults = TrainConfig()
    for field in dataclasses.fields(TrainConfig):
        if field.name in ("device", "train_embeddings_norms"):
            continue
        flag = "--" + field.name.replace("_", "-")
        value = getattr(defaults, field.name)
        if isinstance(value, bool):
            parser.add_argument(flag, action="store_true", default=value)
        else:
            kind = type(value) if value is not None else (int if field.name == "extend_to" else str)
            parser.add_argument(flag, type=kind, default=value)
    parser.add_argument("--train-embeddings-norms", dest="train_embeddings_norms", action="store_true", default=None,
                        help="also train embeddings and norms (default: only with --extend-to, as LongLoRA)")
    parser.add_argument("--freeze-embeddings-norms", dest="train_embeddings_norms", action="store_false",
                        help="keep embeddings and norms frozen even with --extend-to")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..commands.cli import load_model_from_args
    from ..data import load_texts, pack, tokenize_documents
    from .config import TrainConfig
    from .loop import train_heads

    if args.threads:
        torch.set_num_threads(args.threads)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    cfg = TrainConfig.from_dict({**values, "device": args.device})
    cfg.validate()
    model, tokenizer = load_model_from_args(args)
    rows = pack(tokenize_documents(load_texts(args.data), tokenizer), cfg.n_segments, cfg.segment_size)
    eval_rows = None
    if cfg.eval_every:
        held = pack(tokenize_documents(load_texts(args.eval_data), tokenizer), cfg.n_segments, cfg.segment_size)
        eval_rows = held[: args.eval_sequences]
    print(f"training on {len(rows)} sequences of {cfg.n_segments} x {cfg.segment_size} tokens")
    final = train_heads(model, rows, cfg, eval_rows=eval_rows)
    print(f"trained heads written to {final}")
    return 0
