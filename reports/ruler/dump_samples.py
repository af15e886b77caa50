"""Write lococo's RULER samples, with their exact token ids, to a JSONL file for kvpress (issue 17, item 3).

Runs in lococo's virtual environment. The samples are made exactly as ``lococo eval ruler`` makes them
(``RulerSamples``: RULER's own generators, the same task, length, number of samples and seed give the same
samples), and every prompt is tokenised by lococo's ``build_prompt`` in each setting, so kvpress
(``reports/ruler/kvpress_run.py``, its own virtual environment) reads the very same token ids:

    .venv/bin/python reports/ruler/dump_samples.py --task niah_single_1 --length 4096 --samples 1 \\
        --output /tmp/ruler_samples.jsonl

One line per (task, length, sample): ``task``, ``family``, ``metric``, ``length``, ``index``, ``ruler_length``,
``context``, ``question`` (question + answer prefix), ``query`` (the question alone), ``outputs`` (the references),
``max_new_tokens`` (the task's answer budget), ``model`` (the model folder whose tokenizer made the ids),
``sample_seed``, and ``prompts``: for each setting, ``context_ids`` (read, then compressed, before the question)
and ``question_ids`` (question + answer prefix). ``query-aware`` puts the question and a blank line before the
context too, as lococo does; both settings share the question ids.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

DEFAULT_LENGTHS = (4096, 8192)


def load_tokenizer(model: str | None) -> tuple[Any, str]:
    """The tokenizer ``lococo.load_model(model)`` returns (without loading the weights) and the folder or hub id
    it came from: the offline reference model for None, ``reference`` or its name."""
    from transformers import AutoTokenizer

    from lococo.models import REFERENCE_ALIASES, prepare_tokenizer, reference_model_path

    source = str(reference_model_path()) if model is None or model in REFERENCE_ALIASES else model
    if Path(source).expanduser().is_dir():
        source = str(Path(source).expanduser().resolve())
    return prepare_tokenizer(AutoTokenizer.from_pretrained(source)), source


def report_defaults(path: Path) -> dict[str, Any]:
    """The sample options of the ``lococo eval ruler`` run that wrote ``path``."""
    from lococo.errors import ConfigError

    try:
        meta = json.loads(path.read_text())["meta"]
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"cannot read the meta of a lococo report from {path}: {exc}") from exc
    if meta.get("kind") != "ruler":
        raise ConfigError(f"{path} is a {meta.get('kind')!r} report, not a lococo RULER report")
    config = meta.get("config", {})
    names = {"task": "task", "length": "length", "samples": "samples", "sample_seed": "sample_seed",
             "setting": "setting", "model": "model"}
    return {dest: config[key] for key, dest in names.items() if config.get(key) is not None}


def sample_rows(tokenizer: Any, source: str, task_names: list[str] | None, lengths: list[int], samples: int,
                seed: int, settings: list[str]) -> list[dict[str, Any]]:
    """One JSON-ready row per (task, length, sample), lengths outermost as in ``lococo eval ruler``."""
    from lococo.evaluation.ruler import RulerSamples, build_prompt, check_tasks, load_tasks

    tasks = load_tasks()
    names = check_tasks(task_names, tasks)
    made = RulerSamples(tokenizer, lengths, samples, seed, log=lambda line: print(line, file=sys.stderr))
    rows = []
    for length in lengths:
        for name in names:
            task = tasks[name]
            for sample in made.get(task, length):
                prompts = {}
                for setting in settings:
                    prompt = build_prompt(sample, tokenizer, setting)
                    prompts[setting] = {"context_ids": prompt.ids[: prompt.context_tokens],
                                        "question_ids": prompt.ids[prompt.context_tokens :]}
                rows.append({
                    "task": task.name, "family": task.family, "metric": task.metric, "length": length,
                    "index": sample.index, "ruler_length": sample.ruler_length, "context": sample.context,
                    "question": sample.question, "query": sample.query, "outputs": list(sample.outputs),
                    "max_new_tokens": task.tokens_to_generate, "model": source, "sample_seed": seed,
                    "prompts": prompts,
                })
    return rows


def main(argv: list[str] | None = None) -> int:
    from lococo.evaluation.ruler import DEFAULT_SAMPLE_SEED, SETTINGS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", nargs="+", default=None, help="RULER tasks (default: RULER's 13 standard tasks)")
    parser.add_argument("--length", type=int, nargs="+", default=list(DEFAULT_LENGTHS),
                        help="RULER max_seq_length values (default 4096 8192)")
    parser.add_argument("--samples", type=int, default=20, help="samples per task and length (default 20)")
    parser.add_argument("--sample-seed", type=int, default=DEFAULT_SAMPLE_SEED,
                        help=f"--random_seed of RULER's generators (default {DEFAULT_SAMPLE_SEED})")
    parser.add_argument("--setting", nargs="+", choices=SETTINGS, default=list(SETTINGS),
                        help="settings whose token ids are written (default both)")
    parser.add_argument("--model", default=None,
                        help="model whose tokenizer sizes and tokenises the samples (default: the reference model)")
    parser.add_argument("--from-report", default=None, metavar="JSON",
                        help="take --task, --length, --samples, --sample-seed, --setting and --model from the "
                             "configuration of a lococo eval ruler report (options given here still win)")
    parser.add_argument("--output", required=True, help="JSONL file to write")
    first, _ = parser.parse_known_args(argv)
    if first.from_report:
        parser.set_defaults(**report_defaults(Path(first.from_report)))
    args = parser.parse_args(argv)
    if args.samples < 1:
        parser.error(f"--samples must be >= 1, got {args.samples}")

    start = time.perf_counter()
    tokenizer, source = load_tokenizer(args.model)
    rows = sample_rows(tokenizer, source, args.task, list(dict.fromkeys(args.length)), args.samples,
                       args.sample_seed, list(dict.fromkeys(args.setting)))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    tmp.replace(out)
    print(f"wrote {len(rows)} samples to {out} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from lococo.errors import LococoError

    try:
        sys.exit(main())
    except LococoError as exc:  # ConfigError (bad task, bad report) and fetch errors: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
