"""NVIDIA kvpress on lococo's RULER samples, token for token (issue 17, item 3).

Runs in kvpress's own virtual environment (``reports/ruler/run_kvpress.sh`` makes it) and imports nothing from
lococo. It reads the JSONL of ``reports/ruler/dump_samples.py`` (the samples of ``lococo eval ruler`` with the
token ids lococo's ``build_prompt`` makes) and, for every sample, setting, press and kept-token budget M, lets
kvpress's pipeline (``pipeline("kv-press-text-generation")``) prefill the context ids with the press, then
answer greedily from the question ids:

    OMP_NUM_THREADS=1 runs/kvpress-venv/bin/python reports/ruler/kvpress_run.py \\
        --samples /tmp/ruler_samples.jsonl --press tova snapkv --mem-size 128 --setting query-agnostic \\
        --output /tmp/kvpress_predictions.jsonl

What is matched with ``lococo eval ruler``:

- the token ids: the pipeline's ``forward`` gets ``context_ids`` and ``question_ids`` from the samples file, so
  kvpress's own ``preprocess`` (which would apply the model's chat template) is not used; lococo's prompts are
  RULER's ``base`` template, plain text. For the same reason the model is loaded through a folder of links to the
  model's files that leaves the chat template out (KVzipPress asks the tokenizer for it to build its
  reconstruction prompt);
- the settings: ``query-agnostic`` compresses the context before any question token; ``query-aware`` has the
  question and a blank line before the context as well, lococo's setting. kvpress's own ``query_aware`` option
  (its ``evaluation/evaluate.py``) is another prompt: it appends the question to the end of the context, compresses
  both and asks nothing after, so the last context tokens that SnapKV's window and TOVA's last query look at are
  the question's. Here the question stays before the context, so that the token ids are lococo's;
- the number of kept tokens: for a context of n tokens the press gets ``compression_ratio = 1 - M / n``
  (nudged by a float ulp where needed so that kvpress's ``int(n * (1 - ratio))`` is exactly M; with n <= M nothing
  is compressed); ``cache_tokens`` records what the cache really holds after the prefill;
- greedy decoding of at most the task's answer budget, stopping at the model's EOS token (as transformers'
  ``generate`` does for lococo).

What is not: kvpress prefills the whole context in one pass, then each layer's hook compresses that layer's
cache once, and the question and answer tokens are appended to the compressed cache without further compression;
lococo reads the context, then the question, in segments of B tokens through a cache that never holds more than
M + B slots per layer and KV head, and keeps compressing while it answers.

Each output line is one (task, length, sample, setting, press, M) with the prediction, ``seconds`` (prefill +
answer), ``prefill_seconds``, and the memory of the prefill (from the first forward pass over the context to the
first forward pass over the question, so a press's work after the pass, KVzip's, is included):

- ``peak_rss_bytes``: the process's peak resident set size during the prefill. On Linux the kernel's peak
  (VmHWM) is reset right before it (``/proc/self/clear_refs``), ``peak_rss_scope`` is then "prefill";
  elsewhere it is the process's lifetime peak ("process"). ``rss_before_bytes`` is the RSS before the prefill
  (Python, torch, the weights paged in so far: safetensors maps them and the first forward pass reads them in).
  The C allocator keeps freed memory, so after the first prefill of a process the RSS does not go back down:
  the peak of a later prefill is at least the high-water mark of the earlier ones. The comparable figure is the
  first prefill of a fresh process (``run_kvpress.sh memory`` runs one process per press and length);
- ``peak_tensor_bytes`` (with ``--tensor-memory``): the highest total of tensor bytes allocated during the
  prefill and still alive, from the CPU allocator's events recorded by ``torch.profiler``
  (``profile_memory=True``): activations, the KV cache and the press's own work, above what was allocated
  before (the weights). Off by default: the profiler's bookkeeping lives in the same process (in the smoke runs
  the peak RSS moved by -0.2 to +0.6 GiB with it on), so RSS and tensor bytes are measured in separate runs.

Presses (``--press``): ``streaming_llm``, ``snapkv``, ``tova``, ``knorm``, ``expected_attention`` (the default
list, each with kvpress's default arguments), ``kvzip`` and ``full`` (no press). KVzipPress runs on CPU but
reconstructs the context in 2 to 3 more passes (measured 125 s for one 4K sample, against 20 s for the others)
and, in kvpress 0.5.5, compresses by masking: the cache keeps every token and the answer cannot attend to the
pruned keys; its budget is shared by all layers and heads (M per layer and head on average), so ``cache_tokens``
is the full context for it.

The output is appended to line by line; a rerun skips the rows already there (resume).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

PRESSES = {
    "streaming_llm": "StreamingLLMPress",
    "snapkv": "SnapKVPress",
    "tova": "TOVAPress",
    "knorm": "KnormPress",
    "expected_attention": "ExpectedAttentionPress",
    "kvzip": "KVzipPress",
    "full": None,  # no press: kvpress's pipeline with the full cache (a check against lococo's "full")
}
"""Press names (the record's policy is ``kvpress:<name>``) and their kvpress classes, default arguments."""

DEFAULT_PRESSES = ("streaming_llm", "snapkv", "tova", "knorm", "expected_attention")
SETTINGS = ("query-agnostic", "query-aware")
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


class RunError(Exception):
    """A clear, user-facing error (bad input file, missing model folder, ...)."""


# ------------------------------------------------------------------------------------------------ memory


def _status_bytes(field: str) -> int | None:
    """A ``/proc/self/status`` field in bytes (``VmRSS``, ``VmHWM``), None where there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak RSS of this process to its current RSS (Linux >= 4.0); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_bytes("VmHWM") is not None


def _lifetime_peak_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def _peak_tensor_bytes(prof: Any) -> int:
    """Highest running total of the CPU allocations and frees recorded by ``prof`` (frees of blocks allocated
    before it started are not recorded, so the total starts at 0 and counts only the prefill's own tensors)."""
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    total = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        total += int(event.nbytes())
        peak = max(peak, total)
    return peak


class PrefillProbe:
    """Time and memory of the prefill, from forward hooks.

    It starts at the first call of the decoder (``model.model``) after :meth:`arm` (the pipeline's prefill over
    the context) and stops at the first call of the language-model head module (``model``), which the pipeline
    makes only for the question: everything the press does in between is the prefill's."""

    def __init__(self, model: Any, tensor_memory: bool) -> None:
        self.tensor_memory = tensor_memory
        self.handles = [
            model.model.register_forward_pre_hook(self._start),
            model.register_forward_pre_hook(self._stop),
        ]
        self.armed = False
        self.prof: Any = None
        self.t0: float | None = None
        self.result: dict[str, Any] | None = None

    def arm(self) -> None:
        if self.prof is not None:  # a run that failed between the two hooks
            self.prof.stop()
        gc.collect()
        self.armed, self.result, self.prof, self.t0 = True, None, None, None

    def _start(self, module: Any, args: Any) -> None:
        if not self.armed:
            return
        self.armed = False
        self.rss_before = _status_bytes("VmRSS")
        self.scope = "prefill" if _reset_peak_rss() else "process"
        if self.tensor_memory:
            from torch.profiler import ProfilerActivity, profile

            self.prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self.prof.start()
        self.t0 = time.perf_counter()

    def _stop(self, module: Any, args: Any) -> None:
        if self.t0 is None:
            return
        seconds = time.perf_counter() - self.t0
        peak = _status_bytes("VmHWM") if self.scope == "prefill" else _lifetime_peak_rss()
        tensors = None
        if self.prof is not None:
            self.prof.stop()
            tensors = _peak_tensor_bytes(self.prof)
            self.prof = None
        self.result = {"prefill_seconds": round(seconds, 3), "rss_before_bytes": self.rss_before,
                       "peak_rss_bytes": peak, "peak_rss_scope": self.scope, "peak_tensor_bytes": tensors}
        self.t0 = None

    def take(self) -> dict[str, Any]:
        if self.result is None:
            raise RuntimeError("the prefill probe saw no prefill: did kvpress's pipeline change?")
        result, self.result = self.result, None
        return result

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


# ------------------------------------------------------------------------------------------------ kvpress


def compression_ratio(context_tokens: int, mem_size: int, n_kept: Any) -> float:
    """``1 - M / n``, nudged by ulps so that ``n_kept(n, ratio)`` (kvpress's ``int(n * (1 - ratio))``) is M."""
    if mem_size >= context_tokens:
        return 0.0
    ratio = 1.0 - mem_size / context_tokens
    for _ in range(64):
        kept = n_kept(context_tokens, ratio)
        if kept == mem_size:
            return ratio
        ratio = math.nextafter(ratio, 0.0 if kept < mem_size else 1.0)
    raise RunError(f"no compression ratio keeps exactly {mem_size} of {context_tokens} tokens")


def _n_kept_fn() -> Any:
    try:
        from kvpress.utils import compute_n_kept
    except ImportError:  # older kvpress: ScorerPress computed it inline
        return lambda n, ratio: int(n * (1 - ratio))
    return compute_n_kept


def make_press(name: str, ratio: float) -> Any:
    """A fresh kvpress press (default arguments but the ratio); None for ``full``."""
    import kvpress

    cls_name = PRESSES[name]
    if cls_name is None:
        return None
    return getattr(kvpress, cls_name)(compression_ratio=ratio)


def press_args(press: Any) -> dict[str, Any]:
    """The press's dataclass fields that are plain values (its configuration), without the ratio."""
    if press is None or not dataclasses.is_dataclass(press):
        return {}
    out = {}
    for f in dataclasses.fields(press):
        value = getattr(press, f.name, None)
        if f.name != "compression_ratio" and not f.name.startswith("_") and isinstance(value, bool | int | float | str):
            out[f.name] = value
    return out


def model_view(folder: Path, tmp: Path) -> Path:
    """A folder of links to ``folder``'s files without the chat template (files, and the key in
    ``tokenizer_config.json``), so kvpress treats the model as a base model, as lococo's RULER prompts do."""
    view = tmp / folder.name
    view.mkdir()
    for item in folder.iterdir():
        if item.name in CHAT_TEMPLATE_FILES or item.name.endswith(".lock"):
            continue
        if item.name == "tokenizer_config.json":
            config = json.loads(item.read_text())
            config.pop("chat_template", None)
            (view / item.name).write_text(json.dumps(config, indent=2))
        else:
            (view / item.name).symlink_to(item.resolve())
    return view


def load_pipeline(model_dir: Path, tmp: Path, dtype: str) -> tuple[Any, Any]:
    """kvpress's text-generation pipeline on the model in ``model_dir`` (through :func:`model_view`)."""
    import kvpress  # noqa: F401  (registers "kv-press-text-generation")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if not model_dir.is_dir():
        raise RunError(f"model folder {model_dir} not found (pass --model FOLDER)")
    view = model_view(model_dir, tmp)
    model = AutoModelForCausalLM.from_pretrained(view, dtype=getattr(torch, dtype), attn_implementation="sdpa",
                                                 use_safetensors=True)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(view)
    if tokenizer.chat_template is not None:
        raise RunError(f"the tokenizer in {view} still has a chat template")
    return pipeline("kv-press-text-generation", model=model, tokenizer=tokenizer), model


def run_one(pipe: Any, probe: PrefillProbe, context_ids: list[int], question_ids: list[int], press: Any,
            max_new_tokens: int) -> dict[str, Any]:
    """One greedy answer through kvpress's pipeline (its ``forward``: prefill with the press, then the answer)."""
    import torch
    from transformers import DynamicCache

    cache = DynamicCache()
    inputs = {"context_ids": torch.tensor([context_ids], dtype=torch.long),
              "questions_ids": [torch.tensor([question_ids], dtype=torch.long)]}
    probe.arm()
    start = time.perf_counter()
    outputs = pipe.forward(inputs, press=press, max_new_tokens=max_new_tokens, cache=cache)
    answer = pipe.postprocess(outputs, single_question=True)["answer"]
    seconds = time.perf_counter() - start
    stored = [cache.get_seq_length(i) for i in range(len(cache))]  # the answer was removed by the pipeline
    return {"prediction": answer, "seconds": round(seconds, 3), "cache_tokens": max(stored) if stored else 0,
            **probe.take()}


# ------------------------------------------------------------------------------------------------ driver


def read_jsonl(path: Path, required: Any, hint: str, error: type[Exception] = RunError) -> list[dict[str, Any]]:
    """The JSON lines of ``path`` (blank lines skipped), each checked for the ``required`` keys; ``error`` with the
    file, the line and ``hint`` otherwise. Also used by merge_kvpress.py (this file imports nothing heavy)."""
    if not path.exists():
        raise error(f"{path} not found: {hint}")
    rows = []
    with path.open() as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise error(f"{path}:{number}: not JSON ({exc})") from exc
            missing = [k for k in required if k not in row]
            if missing:
                raise error(f"{path}:{number}: missing {', '.join(missing)}; {hint}")
            rows.append(row)
    return rows


def read_samples(path: Path) -> list[dict[str, Any]]:
    required = ("task", "length", "index", "outputs", "max_new_tokens", "prompts")
    rows = read_jsonl(path, required, "write the samples with reports/ruler/dump_samples.py")
    if not rows:
        raise RunError(f"{path} holds no samples")
    return rows


def row_key(row: dict[str, Any]) -> tuple:
    return (row["task"], row["length"], row["index"], row["setting"], row["press"], row["mem_size"])


def versions() -> dict[str, str]:
    import torch
    import transformers

    return {"kvpress": metadata.version("kvpress"), "transformers": transformers.__version__,
            "torch": torch.__version__, "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", required=True, help="JSONL written by reports/ruler/dump_samples.py")
    parser.add_argument("--press", nargs="+", choices=list(PRESSES), default=list(DEFAULT_PRESSES),
                        help=f"kvpress presses (default: {' '.join(DEFAULT_PRESSES)}); kvzip runs 2-3 extra "
                             "passes over the context; full: no press")
    parser.add_argument("--mem-size", type=int, nargs="+", default=[128, 512],
                        help="kept tokens M per layer and head (default 128 512)")
    parser.add_argument("--setting", nargs="+", choices=SETTINGS, default=None,
                        help="settings (default: those the samples file has token ids for)")
    parser.add_argument("--task", nargs="+", default=None, help="only these tasks of the samples file")
    parser.add_argument("--length", type=int, nargs="+", default=None, help="only these lengths of the samples file")
    parser.add_argument("--index", type=int, nargs="+", default=None, help="only these sample indices")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="answer tokens (default: each task's budget)")
    parser.add_argument("--model", default=None, help="model folder (default: the one named in the samples file)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--tensor-memory", action="store_true",
                        help="record the prefill's tensor allocations with torch.profiler (raises the RSS)")
    parser.add_argument("--output", required=True, help="JSONL of predictions (appended to; rows present are skipped)")
    args = parser.parse_args(argv)
    if any(m < 1 for m in args.mem_size):
        parser.error(f"--mem-size values must be >= 1, got {args.mem_size}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        parser.error(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")

    import torch

    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    samples = read_samples(Path(args.samples))
    if args.task:
        samples = [s for s in samples if s["task"] in args.task]
    if args.length:
        samples = [s for s in samples if s["length"] in args.length]
    if args.index is not None:
        samples = [s for s in samples if s["index"] in args.index]
    if not samples:
        raise RunError("no sample left after --task/--length/--index")
    models = {s.get("model") for s in samples}
    if args.model is None and (len(models) != 1 or None in models):
        raise RunError(f"the samples name {len(models)} models; pass --model FOLDER")
    model_dir = Path(args.model or models.pop()).expanduser()
    if args.setting is None:
        args.setting = [st for st in SETTINGS if all(st in s["prompts"] for s in samples)]
    for s in samples:
        missing = [st for st in args.setting if st not in s["prompts"]]
        if missing:
            raise RunError(f"sample {s['task']}/{s['length']}/{s['index']} has no token ids for {', '.join(missing)}")

    out = Path(args.output)
    done = set()
    if out.exists():
        with out.open() as f:
            done = {row_key(json.loads(line)) for line in f if line.strip()}
    jobs = {}  # key -> (sample, setting, press, M), in order, without repeats
    for s in samples:
        for setting in dict.fromkeys(args.setting):
            for name in dict.fromkeys(args.press):
                for mem in dict.fromkeys(args.mem_size) if name != "full" else [None]:
                    jobs.setdefault((s["task"], s["length"], s["index"], setting, name, mem), (s, setting, name, mem))
    todo = [job for key, job in jobs.items() if key not in done]
    if len(todo) < len(jobs):
        print(f"resuming {out}: {len(jobs) - len(todo)} of {len(jobs)} runs already there", file=sys.stderr)
    if not todo:
        return 0

    env = versions()
    n_kept = _n_kept_fn()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kvpress-model-") as tmp:
        start = time.perf_counter()
        pipe, model = load_pipeline(model_dir, Path(tmp), args.dtype)
        print(f"kvpress {env['kvpress']}, transformers {env['transformers']}, torch {env['torch']}: model loaded "
              f"in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        probe = PrefillProbe(model, tensor_memory=args.tensor_memory)
        try:
            with out.open("a") as f:
                for number, (sample, setting, name, mem) in enumerate(todo, 1):
                    ids = sample["prompts"][setting]
                    n = len(ids["context_ids"])
                    ratio = 0.0 if mem is None else compression_ratio(n, mem, n_kept)
                    press = make_press(name, ratio)
                    budget = args.max_new_tokens or int(sample["max_new_tokens"])
                    try:
                        result = run_one(pipe, probe, ids["context_ids"], ids["question_ids"], press, budget)
                    except Exception:
                        print(f"error: kvpress {name} (M={mem}, ratio {ratio}) failed on {sample['task']} "
                              f"{sample['length']} #{sample['index']} {setting}; the rows before it are kept",
                              file=sys.stderr)
                        raise
                    row = {
                        "task": sample["task"], "family": sample.get("family"), "metric": sample.get("metric"),
                        "length": sample["length"], "index": sample["index"], "setting": setting,
                        "press": name, "policy": f"kvpress:{name}", "press_class": PRESSES[name],
                        "press_args": press_args(press), "mem_size": mem, "compression_ratio": ratio,
                        "context_tokens": n, "prompt_tokens": n + len(ids["question_ids"]),
                        "kept_tokens": n if mem is None else min(mem, n), "outputs": sample["outputs"],
                        "max_new_tokens": budget, **result, "model": str(model_dir),
                        "sample_seed": sample.get("sample_seed"), "dtype": args.dtype,
                        "threads": torch_threads(), "versions": env,
                    }
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                    rss = "" if row["peak_rss_bytes"] is None else f", peak RSS {row['peak_rss_bytes'] / 2**20:.0f} MiB"
                    tensors = ("" if row["peak_tensor_bytes"] is None
                               else f", peak tensors {row['peak_tensor_bytes'] / 2**20:.0f} MiB")
                    print(f"[{number}/{len(todo)}] {sample['task']} {sample['length']} #{sample['index']} {setting} "
                          f"{name} M={mem}: {n} context tokens -> {row['cache_tokens']} cached, "
                          f"{row['seconds']:.1f} s (prefill {row['prefill_seconds']:.1f} s){rss}{tensors}: "
                          f"{row['prediction'][:60]!r}", file=sys.stderr, flush=True)
        finally:
            probe.close()
    return 0


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # the profiler's warning about blocks allocated before it
    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    sys.exit(main())
