"""``lococo eval ppl``, ``decode``, ``passkey`` and ``ruler``: the argparse wiring of the evaluation suite.

Hook it into the main CLI with one row of its table::

    register_command(Command("eval", evaluation_cli.HELP, evaluation_cli.add_arguments, evaluation_cli.run))

(or, with a plain argparse subparsers action, :func:`register`). Only argparse is imported at module
level; the model and torch are loaded when a command runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

POSITIONS = ("absolute", "reindexed", "clamped")  # = lococo.positions.POSITION_SCHEMES (torch not imported here)
HELP = ("evaluate cache policies: long-document perplexity (ppl), decode fidelity (decode), passkey retrieval "
        "(passkey), RULER's synthetic tasks (ruler)")
DEFAULT_MEM_SIZES = [128, 512]
DEFAULT_PPL_LENGTHS = [8192]
DEFAULT_PASSKEY_LENGTHS = [2048, 4096, 8192]
DEFAULT_DEPTHS = [0.1, 0.3, 0.5, 0.7, 0.9]
DEFAULT_PASSKEY_TRIALS = 10
"""Keys per passkey cell: with 10, a cell's 95% Wilson interval is at most 0.53 wide (0.24 to 0.76 at 5/10)."""
DEFAULT_RULER_LENGTHS = [4096, 8192]
DEFAULT_RULER_SAMPLES = 20
"""Samples per RULER cell: with 20, a cell's 95% Wilson interval is at most 0.41 wide (0.30 to 0.70 at 10/20)."""
RULER_SETTINGS = ("query-agnostic", "query-aware")  # lococo.evaluation.ruler.SETTINGS
DEFAULT_RULER_SAMPLE_SEED = 42  # lococo.evaluation.ruler.DEFAULT_SAMPLE_SEED: RULER's own default


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--dtype``, ``--attn``, ``--device``, ``--extension`` as in the main CLI."""
    from lococo.commands.cli import add_model_args

    add_model_args(parser, extension=True)


def _add_common_args(parser: argparse.ArgumentParser, kind: str) -> None:
    _add_model_args(parser)
    grid = parser.add_argument_group("grid")
    grid.add_argument("--policy", nargs="+", default=None, help="policies to evaluate (default: every policy)")
    grid.add_argument("--mem-size", type=int, nargs="+", default=DEFAULT_MEM_SIZES, help="memory slots M (default 128 512)")
    grid.add_argument("--segment-size", type=int, default=512, help="segment length B (default 512)")
    grid.add_argument(
        "--heads", nargs="+", default=None,
        help="trained LoCoCo heads: folders or hub ids, one per --mem-size (each cell takes the one trained with "
        "its M), or 'shipped' for lococo's own heads for the reference model (default: fresh, untrained heads)",
    )
    grid.add_argument(
        "--positions", nargs="+", choices=POSITIONS, default=None,
        help="key positions, rotary models: absolute (as the full cache), reindexed (kept slots moved next to the "
        "incoming tokens, StreamingLLM's scheme) and/or clamped (absolute within the model's context length, slots "
        "farther back moved to just below it); given, they are an axis of the grid (default: each policy's "
        "default, see docs/policies.md)",
    )
    grid.add_argument("--seed", type=int, default=0)
    grid.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    grid.add_argument(
        "--limit-docs", "--num-docs", dest="limit_docs", type=int, default=None,
        help="ppl: at most this many evaluation sequences (documents) per length, each its own sample for the "
        "95%% intervals (default: all the data gives); passkey: essays used as --filler essays",
    )
    grid.add_argument(
        "--output", type=Path, default=Path(f"reports/{kind}.json"),
        help=f"report JSON; .md and .png are written next to it (default reports/{kind}.json)",
    )
    grid.add_argument("--no-progress", action="store_true", help="only the per-cell progress bar")


def _add_text_args(parser: argparse.ArgumentParser, length_help: str) -> None:
    """The evaluation text: source, split, sequence length, windows per document."""
    parser.add_argument("--data", default=None,
                        help="text source as in lococo.data.load_texts, e.g. bundled:code (default: bundled held-out "
                        "narrative: essays and plays)")
    parser.add_argument("--split", default="heldout", help="split of bundled/hub sources (default heldout)")
    parser.add_argument("--length", type=int, nargs="+", default=DEFAULT_PPL_LENGTHS, help=length_help)
    parser.add_argument("--windows-per-doc", type=int, default=1,
                        help="up to this many consecutive --length windows from each long document (default 1); "
                        "intervals then resample documents, not windows")


def _add_compare_to(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compare-to", default=None, metavar="POLICY",
                        help="reference of the paired comparisons in the report (default: the best policy that is "
                        "neither learned nor the full cache, per length and M)")


def add_ppl_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lococo eval ppl``."""
    _add_compare_to(parser)
    _add_text_args(parser, "tokens per sequence")
    _add_common_args(parser, "ppl")
    parser.set_defaults(eval_run=run_ppl)


def add_decode_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lococo eval decode``."""
    _add_text_args(parser, "tokens per sequence: the last --decode-tokens are the ones decoded")
    parser.add_argument("--decode-tokens", type=int, default=256, help="tokens fed one at a time (default 256)")
    _add_compare_to(parser)
    _add_common_args(parser, "decode")
    parser.set_defaults(eval_run=run_decode)


def add_passkey_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lococo eval passkey``."""
    parser.add_argument("--length", type=int, nargs="+", default=DEFAULT_PASSKEY_LENGTHS,
                        help="prompt tokens (default 2048 4096 8192)")
    parser.add_argument("--depth", type=float, nargs="+", default=DEFAULT_DEPTHS,
                        help="needle depths in [0, 1] (default 0.1 0.3 0.5 0.7 0.9)")
    parser.add_argument("--trials", type=int, default=DEFAULT_PASSKEY_TRIALS,
                        help="keys per (length, depth, policy, M) cell; the report gives each cell's accuracy "
                        "with its 95%% Wilson interval (default 10)")
    parser.add_argument("--filler", choices=("classic", "essays"), default="classic", help="filler text")
    parser.add_argument("--max-new-tokens", type=int, default=8, help="answer tokens to generate")
    _add_common_args(parser, "passkey")
    parser.set_defaults(eval_run=run_passkey)


def add_ruler_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``lococo eval ruler``."""
    parser.add_argument("--task", nargs="+", default=None,
                        help="RULER tasks (default: the 13 of RULER's synthetic.yaml: niah_single_1/2/3, "
                        "niah_multikey_1/2/3, niah_multivalue, niah_multiquery, vt, cwe, fwe, qa_1, qa_2)")
    parser.add_argument("--length", type=int, nargs="+", default=DEFAULT_RULER_LENGTHS,
                        help="RULER's max_seq_length: prompt tokens plus the task's answer budget (default 4096 8192)")
    parser.add_argument("--samples", type=int, default=DEFAULT_RULER_SAMPLES,
                        help="samples per task and length, the same for every policy and setting; the report "
                        "gives each cell's score and accuracy with 95%% intervals (default 20)")
    parser.add_argument("--sample-seed", type=int, default=DEFAULT_RULER_SAMPLE_SEED,
                        help="--random_seed of RULER's generators (default 42, RULER's own)")
    parser.add_argument("--setting", nargs="+", choices=RULER_SETTINGS, default=list(RULER_SETTINGS),
                        help="query-agnostic: the question only after the context; query-aware: also before "
                        "it (default both)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="answer tokens to generate (default: each task's tokens_to_generate in RULER)")
    _add_common_args(parser, "ruler")
    parser.set_defaults(eval_run=run_ruler)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Set up ``lococo eval`` with its ``ppl``, ``passkey``, ``decode`` and ``ruler`` subcommands."""
    sub = parser.add_subparsers(dest="eval_kind", metavar="KIND", required=True)
    add_ppl_arguments(sub.add_parser("ppl", help="perplexity of long documents read in segments"))
    add_passkey_arguments(sub.add_parser("passkey", help="passkey retrieval at given lengths and depths"))
    add_decode_arguments(sub.add_parser("decode", help="decode fidelity: the decoding path against segments"))
    add_ruler_arguments(sub.add_parser("ruler", help="RULER's synthetic long-context tasks, made by RULER's own "
                                       "generators (fetched from PyPI), scored with its metrics"))


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``eval`` to an argparse subparsers action (``parser.add_subparsers()``); returns its parser."""
    parser = subparsers.add_parser("eval", help=HELP, description=HELP)
    add_arguments(parser)
    parser.set_defaults(_run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the chosen ``lococo eval`` subcommand; returns the exit status."""
    return int(args.eval_run(args) or 0)


# --------------------------------------------------------------------------------------------------


def _load_model(args: argparse.Namespace) -> tuple[Any, Any]:
    from lococo.commands.cli import load_model_from_args

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    return load_model_from_args(args)


def _policies(args: argparse.Namespace) -> list[str]:
    from lococo.errors import ConfigError
    from lococo.policies import policy_names

    names = args.policy or policy_names()
    unknown = sorted(set(names) - set(policy_names()))
    if unknown:
        raise ConfigError(f"unknown policy {', '.join(unknown)}; choose from {', '.join(policy_names())}")
    return list(dict.fromkeys(names))


def _runnable(names: list[str], model: Any, explicit: bool, positions: list[str] | None = None) -> list[str]:
    """The policies that can run on ``model``, checked before any cell: a policy asked for by name that
    cannot is a clear error at once; from the default (every policy) the ones that cannot are left out, with
    a line saying why."""
    from lococo.errors import IncompatibleModelError
    from lococo.models_support import layout_for_policy
    from lococo.policies import policy_class

    kept = []
    for name in names:
        try:
            layout_for_policy(model, policy_class(name), reindex_positions=any(p != "absolute" for p in positions or ()))
        except IncompatibleModelError as exc:
            if explicit:
                raise
            print(f"skipping {name}: {exc}", file=sys.stderr)
            continue
        kept.append(name)
    return kept


def _meta(kind: str, args: argparse.Namespace, policies: list[str]) -> dict[str, Any]:
    """Report meta: the full configuration (JSON-safe) plus versions, commit, machine, date."""
    from .report import run_meta

    skip = {"_run", "eval_run", "no_progress", "threads"}
    config = {k: v for k, v in vars(args).items() if k not in skip}
    config["policy"] = policies
    return run_meta(kind, json.loads(json.dumps(config, default=str)))


def _run_grid(
    kind: str,
    args: argparse.Namespace,
    model: Any,
    evaluate: Callable[..., dict[str, Any]],
    plot: Callable[[list[dict], Path], None],
    extra_axes: dict[str, list[Any]] | None = None,
    summary: Callable[[list[dict]], str] | None = None,
    table: Callable[[list[dict]], str] | None = None,
) -> int:
    from .grid import expand_cells, run_grid

    policies = _runnable(_policies(args), model, explicit=bool(args.policy), positions=args.positions)
    if args.positions:  # without it, each policy's default (records still say which)
        extra_axes = {"positions": list(dict.fromkeys(args.positions)), **(extra_axes or {})}
    cells = expand_cells(policies, args.mem_size, args.length, args.segment_size, extra_axes)
    records = run_grid(
        cells, evaluate, model, args.output, _meta(kind, args, policies), plot=plot, summary=summary, table=table,
        heads_dir=args.heads or args.extension, seed=args.seed, extra_keys=list(extra_axes or {}), desc=kind,
    )
    print(f"wrote {len(records)} records to {args.output} (+ .md, .png)")
    return 0


def run_ppl(args: argparse.Namespace) -> int:
    """``lococo eval ppl``: perplexity grid over policies, memory sizes and lengths."""
    import torch

    from .perplexity import paired_summary, perplexity, plot_perplexity

    torch.manual_seed(args.seed)
    model, tokenizer = _load_model(args)
    sequences = _sequences(args, tokenizer)

    def evaluate(cell: dict[str, Any], new_cache: Callable[[], Any]) -> dict[str, Any]:
        seqs, groups = sequences[cell["length"]]
        return perplexity(model, seqs, new_cache, cell["segment_size"], groups=groups, progress=not args.no_progress)

    return _run_grid("ppl", args, model, evaluate, plot_perplexity,
                     summary=lambda records: paired_summary(records, args.compare_to))


def _sequences(args: argparse.Namespace, tokenizer: Any) -> dict[int, tuple[list, list[int] | None]]:
    """Evaluation sequences of each ``--length`` from ``--data`` and the document of each (None with one window
    per document: every sequence is its own document); a clear error if the data is too short."""
    from lococo.data import load_texts, tokenize_documents
    from lococo.errors import ConfigError

    from .perplexity import document_windows

    token_lists = tokenize_documents(load_texts(args.data, split=args.split), tokenizer)
    sequences = {}
    for n in args.length:
        seqs, groups = document_windows(token_lists, n, args.limit_docs, args.windows_per_doc)
        sequences[n] = (seqs, groups if args.windows_per_doc > 1 else None)
    empty = [n for n, (seqs, _) in sequences.items() if not seqs]
    if empty:
        total = sum(len(t) for t in token_lists)
        raise ConfigError(f"the data has {total} tokens in all, too few for --length {' '.join(map(str, empty))}")
    return sequences


def run_decode(args: argparse.Namespace) -> int:
    """``lococo eval decode``: decode fidelity over policies, memory sizes and lengths."""
    import torch

    from .decode import decode_fidelity, decode_summary, plot_decode

    torch.manual_seed(args.seed)
    model, tokenizer = _load_model(args)
    sequences = _sequences(args, tokenizer)

    def evaluate(cell: dict[str, Any], new_cache: Callable[[], Any]) -> dict[str, Any]:
        seqs, groups = sequences[cell["length"]]
        return decode_fidelity(model, seqs, new_cache, cell["segment_size"], args.decode_tokens, groups=groups,
                               progress=not args.no_progress)

    return _run_grid("decode", args, model, evaluate, plot_decode,
                     summary=lambda records: decode_summary(records, args.compare_to))


def run_passkey(args: argparse.Namespace) -> int:
    """``lococo eval passkey``: retrieval accuracy grid over policies, memory sizes, lengths and depths."""
    import torch

    from lococo.errors import ConfigError

    from .passkey import passkey_accuracy, passkey_summary, passkey_table, plot_passkey

    if args.trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {args.trials}")

    torch.manual_seed(args.seed)
    model, tokenizer = _load_model(args)
    filler_text = None
    if args.filler == "essays":
        from lococo.data import load_texts

        docs = load_texts("bundled:essays", split="heldout")[: args.limit_docs]
        filler_text = "\n\n".join(d.text for d in docs)

    def evaluate(cell: dict[str, Any], new_cache: Callable[[], Any]) -> dict[str, Any]:
        return passkey_accuracy(
            model, tokenizer, new_cache, length=cell["length"], depth=cell["depth"], trials=args.trials,
            segment_size=cell["segment_size"], seed=args.seed, filler_text=filler_text,
            max_new_tokens=args.max_new_tokens, progress=not args.no_progress,
        )

    return _run_grid("passkey", args, model, evaluate, plot_passkey, {"depth": args.depth},
                     summary=passkey_summary, table=passkey_table)


def run_ruler(args: argparse.Namespace) -> int:
    """``lococo eval ruler``: RULER score grid over policies, memory sizes, lengths, tasks and settings."""
    import torch
    from tqdm.auto import tqdm

    from lococo.errors import ConfigError

    from .ruler import (
        RulerSamples,
        check_tasks,
        evaluate_ruler,
        load_tasks,
        plot_ruler,
        ruler_summary,
        ruler_table,
    )

    if args.samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {args.samples}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    tasks = load_tasks()
    names = check_tasks(args.task, tasks)
    settings = list(dict.fromkeys(args.setting))

    torch.manual_seed(args.seed)
    model, tokenizer = _load_model(args)
    samples = RulerSamples(tokenizer, args.length, args.samples, args.sample_seed, log=tqdm.write)

    def evaluate(cell: dict[str, Any], new_cache: Callable[[], Any]) -> dict[str, Any]:
        task = tasks[cell["task"]]
        return evaluate_ruler(
            model, tokenizer, new_cache, task, samples.get(task, cell["length"]), setting=cell["setting"],
            segment_size=cell["segment_size"], max_new_tokens=args.max_new_tokens, seed=args.seed,
            progress=not args.no_progress,
        )

    return _run_grid("ruler", args, model, evaluate, plot_ruler, {"task": names, "setting": settings},
                     summary=ruler_summary, table=ruler_table)
