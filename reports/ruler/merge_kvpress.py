"""Score kvpress's RULER predictions with RULER's metric and put them beside lococo's (issue 17, item 3).

Runs in lococo's virtual environment. It reads the JSONL of ``reports/ruler/kvpress_run.py``, scores every
prediction with lococo's ``per_sample_scores`` (RULER's own metric, after RULER's post-processing), and builds one
record per (length, task, setting, press, M) cell in the format of ``lococo eval ruler``: the policy is
``kvpress:<press>`` (``kvpress:tova``, ...), ``mem_size`` the kept tokens M, ``segment_size`` None (kvpress
prefills the whole context in one pass), ``positions`` "absolute" (kvpress keeps the original positions), the
same score and accuracy intervals (same bootstrap seed), ``answers``, and ``seconds`` (the cell's samples,
prefill + answer; the model load is not counted). Each record also has ``kvpress`` (press class, arguments,
versions) and the means of ``compression_ratio``, ``context_tokens``, ``cache_tokens`` and ``prefill_seconds``,
and the highest ``peak_rss_bytes`` and ``peak_tensor_bytes`` over its samples.

    .venv/bin/python reports/ruler/merge_kvpress.py --predictions /tmp/kvpress_predictions.jsonl \\
        --report reports/ruler.json --output /tmp/ruler_with_kvpress.json

With ``--report`` (a ``lococo eval ruler`` JSON) the output holds lococo's records followed by kvpress's (kvpress
records already in it are replaced), with lococo's meta plus a ``kvpress`` entry. ``--output`` may be the report
itself: ``lococo eval ruler`` resuming from it keeps the kvpress records (no lococo cell has their policy names),
though it rewrites the meta without the ``kvpress`` entry. The samples are checked to be
the same: wherever a lococo cell and a kvpress cell share (length, task, setting) and a sample index, their
references must be equal. ``--memory`` adds the prefill memory rows of ``run_kvpress.sh memory`` as a table.
The output is written with lococo's ``write_report`` and rendered by ``ruler_table``, ``ruler_summary`` and
``plot_ruler`` (``.json``, ``.md``, ``.png``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from kvpress_run import read_jsonl as read_rows  # noqa: E402  (stdlib only at import: it runs without kvpress)

KEY = ("length", "task", "setting", "policy", "mem_size")
REQUIRED = ("task", "length", "index", "setting", "press", "policy", "mem_size", "outputs", "prediction",
            "max_new_tokens", "prompt_tokens", "seconds")


class MergeError(Exception):
    """A clear, user-facing error."""


def read_jsonl(paths: Sequence[str], required: Sequence[str] = REQUIRED) -> list[dict[str, Any]]:
    """Every row of the JSONL files ``paths``, checked for the ``required`` keys."""
    hint = "is it kvpress_run.py's output?"
    return [row for name in paths for row in read_rows(Path(name), required, hint, MergeError)]


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def _max(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return max(kept) if kept else None


def build_records(rows: list[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """One lococo-format RULER record per (length, task, setting, policy, M) of the predictions."""
    from lococo.evaluation.ruler import check_tasks, load_tasks, per_sample_scores
    from lococo.evaluation.stats import bootstrap_interval, wilson_interval

    tasks = load_tasks()
    check_tasks(sorted({r["task"] for r in rows}), tasks)
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        cells.setdefault(tuple(row[k] for k in KEY), []).append(row)
    records = []
    for key, group in cells.items():
        length, name, setting, policy, mem = key
        group.sort(key=lambda r: r["index"])
        indices = [r["index"] for r in group]
        if len(set(indices)) != len(indices):
            raise MergeError(f"cell {key} has sample {indices} more than once (the same predictions given twice?)")
        budgets = {r["max_new_tokens"] for r in group}
        if len(budgets) != 1:
            raise MergeError(f"cell {key} mixes answer budgets {sorted(budgets)}")
        task = tasks[name]
        scores = per_sample_scores(task, [r["prediction"] for r in group], [r["outputs"] for r in group])
        n = len(scores)
        correct = sum(s >= 1.0 for s in scores)
        mean, low, high = bootstrap_interval(scores, seed=seed)
        acc_low, acc_high = wilson_interval(correct, n)
        first = group[0]
        record: dict[str, Any] = {"policy": policy, "mem_size": mem, "segment_size": None, "length": length,
                                  "task": name, "setting": setting}
        if mem is not None:
            record["positions"] = "absolute"
        record.update({
            "family": task.family, "metric": task.metric, "score": mean, "score_low": low, "score_high": high,
            "accuracy": correct / n, "accuracy_low": acc_low, "accuracy_high": acc_high, "correct": correct,
            "samples": n, "prompt_tokens": sum(r["prompt_tokens"] for r in group) / n,
            "max_new_tokens": first["max_new_tokens"],
            "answers": [{"index": r["index"], "outputs": list(r["outputs"]), "prediction": r["prediction"],
                         "score": s} for r, s in zip(group, scores, strict=True)],
            "kvpress": {"press_class": first.get("press_class"), "press_args": first.get("press_args", {}),
                        "versions": first.get("versions", {}), "prefill": "whole context in one pass, then compressed"},
            "compression_ratio": _mean([r.get("compression_ratio") for r in group]),
            "context_tokens": _mean([r.get("context_tokens") for r in group]),
            "cache_tokens": _mean([r.get("cache_tokens") for r in group]),
            "prefill_seconds": _mean([r.get("prefill_seconds") for r in group]),
            "peak_rss_bytes": _max([r.get("peak_rss_bytes") for r in group]),
            "peak_tensor_bytes": _max([r.get("peak_tensor_bytes") for r in group]),
            "seconds": round(sum(r["seconds"] for r in group), 3),
        })
        records.append(record)
    return records


def check_same_samples(lococo: list[dict[str, Any]], kvpress: list[dict[str, Any]]) -> int:
    """Raise if a sample index of a (length, task, setting) has other references in lococo's records than in
    kvpress's; return how many (cell, index) pairs were compared."""
    refs: dict[tuple, list[str]] = {}
    for r in lococo:
        for a in r.get("answers", []):
            refs.setdefault((r["length"], r["task"], r["setting"], a["index"]), list(a["outputs"]))
    compared = 0
    for r in kvpress:
        for a in r["answers"]:
            key = (r["length"], r["task"], r["setting"], a["index"])
            if key in refs:
                compared += 1
                if refs[key] != list(a["outputs"]):
                    raise MergeError(
                        f"sample {key} differs: lococo's references {refs[key]} vs kvpress's {a['outputs']}; the "
                        "samples were not made with the same tasks/lengths/seed/tokenizer (dump_samples.py options)")
    return compared


def _gib(value: float | None) -> str:
    return "" if value is None else f"{value / 2**30:.2f}"


def _mib(value: float | None) -> str:
    return "" if value is None else f"{value / 2**20:.0f}"


def memory_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: kvpress's prefill memory per (length, setting, press, M). The RSS columns come from the runs
    without the profiler, the tensor column from the runs with it (``run_kvpress.sh memory`` makes both); with
    several runs of a kind, the highest value."""
    if not rows:
        return ""
    cells: dict[tuple, dict[str, list]] = {}
    for r in rows:
        cell = cells.setdefault((r["length"], r["setting"], r["policy"], r["mem_size"]), {
            "context": [], "seconds": [], "before": [], "rss": [], "tensors": [], "threads": set(), "scope": set()})
        cell["context"].append(r.get("context_tokens"))
        cell["threads"].add(r.get("threads"))
        if r.get("peak_tensor_bytes") is None:
            cell["seconds"].append(r.get("prefill_seconds"))
            cell["before"].append(r.get("rss_before_bytes"))
            cell["rss"].append(r.get("peak_rss_bytes"))
            cell["scope"].add(r.get("peak_rss_scope"))
        else:
            cell["tensors"].append(r.get("peak_tensor_bytes"))
    lines = [
        "## kvpress prefill memory",
        "",
        "`run_kvpress.sh memory`: one prefill per fresh process, one sample, one torch thread. RSS (GiB): the "
        "process's resident set before the prefill (Python, torch, kvpress's imports, the weights read so far) and "
        "its peak during the prefill (weights, runtime, activations, the cache, the press's work); runs without "
        "the profiler. Peak tensors (MiB): the highest total of tensor bytes allocated during the prefill and "
        "alive at once (torch.profiler, profile_memory=True, a separate run): activations, KV cache and the "
        "press's work, without the weights.",
        "",
        "| length | setting | press | M | context tokens | prefill s | RSS before | peak RSS | peak tensors | threads |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (length, setting, policy, mem), c in cells.items():
        seconds = _max(c["seconds"])
        scope = "" if c["scope"] <= {"prefill"} else " (process peak)"
        lines.append(
            f"| {length} | {setting} | {policy} | {'' if mem is None else mem} | {_max(c['context']) or ''} | "
            f"{'' if seconds is None else f'{seconds:.1f}'} | {_gib(_max(c['before']))} | "
            f"{_gib(_max(c['rss']))}{scope} | {_mib(_max(c['tensors']))} | "
            f"{', '.join(str(t) for t in sorted(c['threads'] - {None}))} |")
    return "\n".join(lines) + "\n"


def merge(predictions: Sequence[str], output: str, report: str | None = None, memory: Sequence[str] = (),
          seed: int | None = None) -> list[dict[str, Any]]:
    from lococo.evaluation.report import run_meta, write_report
    from lococo.evaluation.ruler import plot_ruler, ruler_summary, ruler_table

    rows = read_jsonl(predictions)
    if not rows:
        raise MergeError(f"no predictions in {', '.join(predictions)}")
    memory_rows = read_jsonl(memory, required=("length", "setting", "policy", "mem_size", "peak_rss_bytes"))
    base: list[dict[str, Any]] = []
    if report is not None:
        path = Path(report)
        if not path.exists():
            raise MergeError(f"lococo report {path} not found")
        data = json.loads(path.read_text())
        meta = dict(data.get("meta", {}))
        if meta.get("kind") != "ruler":
            raise MergeError(f"{path} is a {meta.get('kind')!r} report, not a lococo RULER report")
        base = [r for r in data.get("records", []) if not str(r.get("policy", "")).startswith("kvpress:")]
        config = meta.get("config", {})
        if seed is None:
            seed = int(config.get("seed", 0))
        seeds = {r.get("sample_seed") for r in rows} - {None}
        if "sample_seed" in config and seeds and seeds != {config["sample_seed"]}:
            raise MergeError(f"kvpress ran on samples of seed {sorted(seeds)}, lococo's report on seed "
                             f"{config['sample_seed']}")
    else:
        meta = run_meta("ruler", {"source": "kvpress", "predictions": [str(p) for p in predictions]})
    records = build_records(rows, seed=seed or 0)
    compared = check_same_samples(base, records) if base else 0
    meta["kvpress"] = {
        "predictions": [str(p) for p in predictions],
        "versions": rows[0].get("versions", {}),
        "model": rows[0].get("model"),
        "policies": list(dict.fromkeys(r["policy"] for r in rows)),
        "mem_sizes": sorted({r["mem_size"] for r in rows if r["mem_size"] is not None}),
        "samples_checked_against_lococo": compared,
        "memory": [{k: r.get(k) for k in ("length", "setting", "policy", "mem_size", "context_tokens",
                                          "prefill_seconds", "rss_before_bytes", "peak_rss_bytes",
                                          "peak_rss_scope", "peak_tensor_bytes", "threads")} for r in memory_rows],
    }
    extra = memory_table(memory_rows)

    def summary(recs: list[dict[str, Any]]) -> str:
        return ruler_summary(recs) + ("\n" + extra if extra else "")

    merged = base + records
    write_report(Path(output), meta, merged, plot=plot_ruler, summary=summary, table=ruler_table)
    print(f"wrote {len(base)} lococo + {len(records)} kvpress records to {output} (+ .md, .png); "
          f"{compared} samples checked against lococo's", file=sys.stderr)
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--predictions", nargs="+", required=True, help="JSONL files of kvpress_run.py")
    parser.add_argument("--report", default=None, help="a lococo eval ruler JSON to put the kvpress records beside")
    parser.add_argument("--memory", nargs="*", default=[], help="JSONL files of the memory runs (a table in the .md)")
    parser.add_argument("--output", required=True, help="merged report JSON (.md and .png are written next to it)")
    parser.add_argument("--seed", type=int, default=None,
                        help="bootstrap seed (default: the lococo report's --seed, else 0)")
    args = parser.parse_args(argv)
    try:
        merge(args.predictions, args.output, args.report, args.memory, args.seed)
    except MergeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
