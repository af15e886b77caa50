"""Speed and memory of reading a long input and decoding after it, per policy and cache size.

Every cell (policy, mem_size, length) runs in a fresh Python process, so its peak RSS is its own:
RSS is sampled every few milliseconds while the input is read and the continuation decoded (the model
load is outside that window). Cache bytes are measured from the cache's tensors after the read.

CLI: ``lococo bench --length 4096 8192 --policy full lococo window --mem-size 128 512``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import torch
from tqdm.auto import tqdm

RESULT_PREFIX = "LOCOCO_BENCH_RESULT "


class RssSampler:
    """Peak resident memory of this process over a window of time (sampled in a thread)."""

    def __init__(self, interval_s: float = 0.005) -> None:
        self.interval_s = interval_s
        self.process = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self.peak = self.process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def segment_times(model, ids, cache, segment_size: int) -> tuple[list[float], torch.Tensor]:
    """Seconds per segment of reading ``ids`` through ``cache``, and the last position's logits."""
    from ..generation import iter_segments

    times, logits = [], None
    t0 = time.perf_counter()
    for _, _, out in iter_segments(model, ids, cache, segment_size, logits_to_keep=1):
        logits = out.logits[:, -1]
        if logits.is_cuda:
            torch.cuda.synchronize()  # kernels run asynchronously: time them, not their launch
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
    return times, logits


def run_cell(cell: dict) -> dict:
    """Measure one cell in this process (called in a fresh subprocess by :func:`run_grid`)."""
    from ..data import long_text_ids
    from ..models import load_model
    from ..policies import policy_class
    from .grid import policy_caches

    torch.manual_seed(cell.get("seed", 0))
    torch.set_num_threads(cell.get("threads") or torch.get_num_threads())
    model, tokenizer = load_model(cell.get("model"))
    if cell.get("extension"):
        from ..extension import load_extended

        load_extended(model, cell["extension"])
    policy, mem_size, segment_size = cell["policy"], cell["mem_size"], cell["segment_size"]
    score_tokens = cell.get("score_tokens", 0)
    if cell.get("text_file"):
        ids = tokenizer(Path(cell["text_file"]).read_text(), return_tensors="pt").input_ids
        ids = ids[:, : cell["length"] + score_tokens]
    else:
        ids = long_text_ids(tokenizer, cell["length"] + score_tokens)
    with policy_caches(model, policy, mem_size, segment_size, heads_dir=cell.get("heads") or cell.get("extension"),
                       seed=cell.get("seed", 0),
                       positions=cell.get("positions"),
                       ) as new_cache:
        cache = new_cache()
        continued: dict[str, str] = {}
        if cell.get("continuation"):
            def before_decode(c):
                continued["continuation"] = _continue(model, tokenizer, c, ids, cell["continuation"])
        else:
            before_decode = None
        measured = _measure(model, cache, ids[:, : cell["length"]], segment_size, cell["decode_tokens"],
                            ids[:, cell["length"] :], before_decode)
        measured.update(continued)
        if cache.policy.compresses:
            measured["positions"] = new_cache.positions
        if getattr(cache.policy, "learned", False):
            measured["heads"] = _heads_source(model, cell.get("heads"))
    return {"policy": policy, "mem_size": mem_size if policy_class(policy).uses_mem_size else None,
            "segment_size": segment_size,
            "length": cell["length"], **measured}


def _heads_source(model, heads: str | None) -> str:
    """Which LoCoCo heads a cell read with: the folder asked for, the shipped ones, or fresh (untrained)."""
    from ..compressor.heads_io import shipped_heads

    if heads not in (None, "auto", "fresh"):
        return str(heads)
    from ..compressor.heads import get_heads

    shipped = shipped_heads(model, get_heads(model).config.mem_size) if heads == "auto" else None
    return f"shipped ({shipped.name})" if shipped is not None else "untrained"


def _continue(model, tokenizer, cache, ids: torch.Tensor, settings: dict) -> str:
    """Sample a continuation of ``ids`` from a fork of ``cache`` (which has read all but its last token)."""
    fork = cache.fork()
    torch.manual_seed(settings.get("seed", 0))
    kwargs = {k: v for k, v in settings.items() if k != "seed"}
    with torch.no_grad():
        out = model.generate(ids, past_key_values=fork, do_sample=True, pad_token_id=tokenizer.pad_token_id,
                             **kwargs)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def _score(model, cache, logits: torch.Tensor, following: torch.Tensor) -> float:
    """Mean loss (nats) of the ``following [1, K]`` tokens after what ``cache`` has read (whose last logits are
    ``logits``): the last one is left unread, so that generation can continue from it."""
    import torch.nn.functional as F

    losses = [F.cross_entropy(logits.float(), following[:, 0], reduction="sum")]
    if following.shape[1] > 1:
        out = model(input_ids=following[:, :-1], past_key_values=cache, use_cache=True)
        losses.append(F.cross_entropy(out.logits[0].float(), following[0, 1:], reduction="sum"))
    return float(sum(losses) / following.shape[1])


def _measure(model, cache, ids: torch.Tensor, segment_size: int, decode_tokens: int,
             following: torch.Tensor | None = None, before_decode=None) -> dict:
    """Read ``ids`` through ``cache`` in segments, then decode greedily; time and memory of both.

    With ``following`` tokens, their loss is measured between the two (``score_nll``: the quality of what
    the cache kept), ``before_decode(cache)`` is called when the cache has read all of them but the last
    (the sampled continuation of the demo), and decoding starts after them.
    A short warm-up forward first pages in every weight (they are memory-mapped), so the RSS growth
    measured afterwards is the cache and the activations, not the model.
    """
    with torch.no_grad():
        model(input_ids=ids[:, :16], use_cache=False)
    rss_before = psutil.Process().memory_info().rss
    scored = {}
    with torch.no_grad(), RssSampler() as sampler:
        t0 = time.perf_counter()
        seg_times, logits = segment_times(model, ids, cache, segment_size)
        prefill_s = time.perf_counter() - t0
        stored = cache.stored_length()
        cache_bytes = cache.cache_bytes()
        if following is not None and following.shape[1]:
            nll = _score(model, cache, logits, following)
            scored = {"score_tokens": following.shape[1], "score_nll": nll, "score_ppl": math.exp(nll)}
            if before_decode is not None:
                before_decode(cache)
            logits = model(input_ids=following[:, -1:], past_key_values=cache, use_cache=True).logits[:, -1]
        token = logits.argmax(-1, keepdim=True)
        t0 = time.perf_counter()
        for _ in range(decode_tokens):
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        decode_s = time.perf_counter() - t0
    steady = seg_times[len(seg_times) // 2 :]  # second half: the cache is full, steady state
    bytes_per_slot = cache_bytes / max(stored, 1)  # keys + values of every layer
    return {
        "prefill_tokens_per_s": ids.shape[1] / prefill_s,
        "steady_segment_s": sum(steady) / len(steady),
        "decode_tokens_per_s": decode_tokens / decode_s,
        "peak_rss_mb": sampler.peak / 2**20,
        "rss_before_mb": rss_before / 2**20,
        "peak_rss_growth_mb": (sampler.peak - rss_before) / 2**20,
        "cache_bytes": cache_bytes,
        "stored_slots": stored,
        "full_cache_bytes_equivalent": int(bytes_per_slot * ids.shape[1]),
        "threads": torch.get_num_threads(),
        **scored,
    }


def run_in_subprocess(cell: dict) -> dict:
    """:func:`run_cell` in a fresh Python process (its peak RSS is its own); the record it returns."""
    cmd = [sys.executable, "-m", "lococo.evaluation.bench", "--cell", json.dumps(cell)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    raise RuntimeError(f"benchmark cell {cell} failed:\n{proc.stderr[-4000:]}")


def run_bench_grid(cells: list[dict], output: Path, meta: dict, common: dict) -> list[dict]:
    """Run every cell not already in ``output`` (resumable), each in a fresh process, rewriting the report."""
    from .grid import cell_key
    from .report import load_records, write_report

    records = load_records(output, meta)
    done = {cell_key(r) for r in records}
    todo = [c for c in cells if cell_key(c) not in done]
    for cell in tqdm(todo, desc="bench", unit="cell"):
        records.append(run_in_subprocess({**cell, **common}))
        write_report(output, meta, records, plot=plot)
    return records


def plot(records: list[dict], path: Path) -> None:
    """Peak RSS growth, cache bytes, prefill and decode speed against context length, one line per policy/M."""
    from .grid import pyplot, series_label

    plt = pyplot()
    metrics = [("peak_rss_growth_mb", "peak RSS growth while reading + decoding (MB)"),
               ("cache_bytes", "cache bytes after reading"),
               ("prefill_tokens_per_s", "prefill tokens/s"), ("decode_tokens_per_s", "decode tokens/s")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4))
    series: dict[str, list[dict]] = {}
    for r in records:
        series.setdefault(series_label(r), []).append(r)
    for ax, (metric, title) in zip(axes, metrics, strict=True):
        for label, rows in sorted(series.items()):
            rows = sorted(rows, key=lambda r: r["length"])
            ax.plot([r["length"] for r in rows], [r[metric] for r in rows], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (tokens)")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="model folder or hub id (default: the reference model)")
    parser.add_argument("--length", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    parser.add_argument("--policy", nargs="+", default=["full", "lococo", "window"])
    parser.add_argument("--mem-size", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--segment-size", type=int, default=512)
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--heads", nargs="+", default=None,
                        help="trained LoCoCo heads, one folder per --mem-size, or 'shipped' (see lococo eval)")
    parser.add_argument("--extension", default=None, help="context extension folder (lococo train --extend-to)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per cell (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("reports/bench.json"))


def run(args: argparse.Namespace) -> int:
    """``lococo bench``: run the grid and write JSON + Markdown + PNG next to each other."""
    from ..commands.cli import check_heads_or_extension
    from ..errors import ConfigError
    from ..policies import policy_names
    from .grid import expand_cells
    from .report import run_meta

    unknown = sorted(set(args.policy) - set(policy_names()))
    if unknown:
        raise ConfigError(f"unknown policy {', '.join(unknown)}; choose from {', '.join(policy_names())}")
    check_heads_or_extension(args.heads, args.extension)
    cells = expand_cells(args.policy, args.mem_size, args.length, args.segment_size)
    common = dict(decode_tokens=args.decode_tokens, model=args.model, heads=args.heads, threads=args.threads,
                  extension=args.extension, seed=args.seed)
    config = {**common, "policies": args.policy, "mem_sizes": args.mem_size, "lengths": args.length,
              "segment_size": args.segment_size}
    records = run_bench_grid(cells, args.output, run_meta("bench", config), common)
    print(f"wrote {len(records)} records to {args.output}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--cell", required=True)
    ns = parser.parse_args()
    print(RESULT_PREFIX + json.dumps(run_cell(json.loads(ns.cell))), flush=True)
