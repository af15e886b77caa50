"""The ``lococo`` command line.

Subcommands are rows of :data:`COMMANDS` (name, help, argument setup, handler); add one with
:func:`register_command`. Handlers import heavy modules lazily so ``lococo --help`` stays fast.
A :class:`~lococo.errors.LococoError` is printed as one ``lococo: error: ...`` line (exit status 2).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lococo._version import __version__
from lococo.errors import LococoError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Command:
    """One subcommand: ``add_arguments(parser)`` sets up its options, ``run(args)`` returns an exit code."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def register_command(command: Command) -> Command:
    """Add (or replace) a subcommand in :data:`COMMANDS`."""
    COMMANDS[command.name] = command
    return command


def add_model_args(parser: argparse.ArgumentParser, *, extension: bool = False) -> None:
    """Add ``--model``, ``--dtype``, ``--attn``, ``--device`` (see :func:`load_model_from_args`).

    ``extension=True`` also adds ``--extension DIR``: a context extension saved by ``lococo train --extend-to``
    (RoPE scaling + LoRA + embeddings/norms + heads), applied to the model as it is loaded.
    """
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default=None,
        help="local model folder or Hugging Face hub id (default: the offline reference SmolLM2-135M-Instruct)",
    )
    group.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    group.add_argument("--attn", choices=("sdpa", "eager"), default="sdpa", help="attention implementation")
    group.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, or auto (a GPU if available)")
    if extension:
        group.add_argument(
            "--extension",
            default=None,
            help="folder written by 'lococo train --extend-to' (its 'extended' folder): RoPE scaling, LoRA, "
            "embeddings/norms and heads applied to the model; --policy lococo then uses its heads",
        )


def resolve_device(name: str) -> str:
    """A torch device string; ``auto`` picks ``cuda`` when available, else ``cpu``."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise LococoError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LococoError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return name


def check_heads_or_extension(heads: Any, extension: str | None) -> None:
    """Refuse ``--heads`` together with ``--extension``: an extension carries its own heads."""
    if heads and extension:
        raise LococoError("give --extension or --heads, not both: an extension carries its own heads")


def load_model_from_args(args: argparse.Namespace) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` as chosen by the options of :func:`add_model_args`."""
    from lococo.models import load_model

    device = resolve_device(args.device)
    extension = getattr(args, "extension", None)
    check_heads_or_extension(getattr(args, "heads", None), extension)
    model, tokenizer = load_model(args.model, dtype=args.dtype, attn_implementation=args.attn)
    if extension:
        from lococo.extension import load_extended

        load_extended(model, extension)
    return model.to(device), tokenizer


def _fetch_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--skip-model", action="store_true", help="do not fetch the reference model")
    parser.add_argument("--skip-corpora", action="store_true", help="do not fetch the bundled corpora")


def _timed(label: str, fn: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    result = fn()
    print(f"{label}: {result} ({time.perf_counter() - start:.1f} s)", flush=True)
    return result


def _run_fetch(args: argparse.Namespace) -> int:
    from lococo._fetch import cache_dir
    from lococo.data import CORPORA, corpus_dir
    from lococo.models import reference_model_path

    print(f"cache: {cache_dir()}", flush=True)
    if not args.skip_model:
        _timed("reference model", reference_model_path)
    if not args.skip_corpora:
        for name in CORPORA:
            _timed(f"corpus {name}", lambda name=name: corpus_dir(name))
    return 0


register_command(
    Command("fetch", "download and prepare the reference model and corpora", _fetch_args, _run_fetch)
)



def _lazy(module: str, attr: str) -> Callable:
    """A handler/setup that imports ``lococo.<module>`` only when the subcommand is used."""

    def call(arg):
        import importlib

        return getattr(importlib.import_module(f"lococo.{module}"), attr)(arg)

    return call


for _name, _module, _help in (
    ("demo", "commands.demo", "one long text under the full cache, window, StreamingLLM, TOVA and LoCoCo: memory, speed, quality"),
    ("generate", "commands.generate", "generate a continuation of a long prompt with a fixed-size cache"),
    ("eval", "evaluation.cli", "evaluate policies: perplexity (ppl), decode fidelity (decode), retrieval (passkey), RULER (ruler)"),
    ("bench", "evaluation.bench", "speed and memory per policy and context length"),
    ("train", "training.cli", "train LoCoCo heads (the model stays frozen)"),
):
    register_command(Command(_name, _help, _lazy(_module, "add_arguments"), _lazy(_module, "run")))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="lococo", description="A fixed-size, learned KV cache for Hugging Face causal LMs."
    )
    parser.add_argument("--version", action="version", version=f"lococo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS.values():
        sub_parser = sub.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub_parser)
        sub_parser.set_defaults(_run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 user error, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except LococoError as exc:
        message = " ".join(str(exc).split())
        print(f"lococo: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("lococo: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
