"""Passkey retrieval (``lococo eval passkey``): find a 5-digit key hidden at a depth of a long filler text.

The prompt has exactly ``length`` tokens: an instruction, filler, the needle ("The pass key is 12345.
Remember it. 12345 is the pass key.") inserted at ``depth`` (0 = start, 1 = end of the filler), more
filler, then the question "What is the pass key? The pass key is". The answer is a few greedy tokens from
:func:`lococo.generate` (prompt read in segments through the policy's cache); a trial is correct when the
first 5-digit number of the answer is the key. Keys are drawn from a generator seeded by
``(seed, length, depth, trial)``, so every policy sees the same keys. The keys of one (length, depth)
share everything before the needle: that prefix is read once, up to a segment boundary, and the cache
forked for each key, which gives exactly the answers of reading each prompt alone.

A cell's accuracy is ``correct / trials`` with its 95% Wilson score interval (``accuracy_low``,
``accuracy_high``): with 10 keys a cell that finds 5 reads 0.5 [0.24, 0.76], so a difference between two
cells is only a finding when the intervals say so. :func:`passkey_summary` pools the depths of each
(policy, M, length) into one rate over ``depths x trials`` keys.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ConfigError
from .grid import CacheFactory, pyplot, series_label
from .stats import wilson_interval

if TYPE_CHECKING:
    from torch import nn

INSTRUCTION = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there."
)
CLASSIC_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"
KEY_RE = re.compile(r"\d{5}")


class Tokenizer(Protocol):
    """What the prompt builder needs from a tokenizer (any Hugging Face tokenizer fits)."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


@dataclass
class PasskeyPrompt:
    """One prompt: token ids, the key, the needle's tokens ``[needle_start, needle_end)``, the filler size."""

    ids: list[int]
    key: str
    needle_start: int
    needle_end: int
    prefix_tokens: int
    filler_tokens: int

    @property
    def depth(self) -> float:
        """Achieved depth: share of the filler tokens placed before the needle."""
        before = self.needle_start - self.prefix_tokens
        return before / self.filler_tokens if self.filler_tokens else 0.0


def _encode(tokenizer: Tokenizer, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def filler_ids(tokenizer: Tokenizer, n_tokens: int, filler_text: str | None = None) -> list[int]:
    """``n_tokens`` filler ids: ``filler_text`` (or the classic sentences) repeated, tokenised once, cut."""
    unit = _encode(tokenizer, " " + (filler_text or CLASSIC_FILLER))
    if not unit:
        raise ConfigError("the filler text tokenises to nothing")
    return (unit * (n_tokens // len(unit) + 1))[:n_tokens]


def random_key(seed: int, length: int, depth: float, trial: int) -> str:
    """A 5-digit key, the same for every policy at (seed, length, depth, trial)."""
    rng = np.random.default_rng([seed, length, round(depth * 1000), trial])
    return str(int(rng.integers(10_000, 100_000)))


def build_prompt(
    tokenizer: Tokenizer, length: int, depth: float, key: str, filler_text: str | None = None
) -> PasskeyPrompt:
    """A prompt of exactly ``length`` tokens with ``key`` at ``depth`` (a fraction of the filler)."""
    if not 0.0 <= depth <= 1.0:
        raise ConfigError(f"depth must be in [0, 1], got {depth}")
    prefix = _encode(tokenizer, INSTRUCTION)
    needle = _encode(tokenizer, NEEDLE.format(key=key))
    question = _encode(tokenizer, QUESTION)
    n_filler = length - len(prefix) - len(needle) - len(question)
    if n_filler < 0:
        raise ConfigError(
            f"length {length} is too short for the passkey prompt ({length - n_filler} tokens without filler)"
        )
    filler = filler_ids(tokenizer, n_filler, filler_text)
    cut = round(depth * n_filler)
    ids = prefix + filler[:cut] + needle + filler[cut:] + question
    start = len(prefix) + cut
    return PasskeyPrompt(ids, key, start, start + len(needle), len(prefix), n_filler)


def answer_pad_id(tokenizer: Any) -> int | None:
    """The id ``generate`` pads greedy answers with: the tokenizer's pad token, else its EOS (also RULER's)."""
    pad_id = getattr(tokenizer, "pad_token_id", None)
    return getattr(tokenizer, "eos_token_id", None) if pad_id is None else pad_id


def answer_is_correct(answer: str, key: str) -> bool:
    """True when the first 5-digit number in ``answer`` is ``key``."""
    found = KEY_RE.search(answer)
    return found is not None and found.group() == key


@torch.no_grad()
def passkey_accuracy(
    model: nn.Module,
    tokenizer: Tokenizer,
    new_cache: CacheFactory,
    *,
    length: int,
    depth: float,
    trials: int,
    segment_size: int,
    seed: int = 0,
    filler_text: str | None = None,
    max_new_tokens: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """``accuracy`` over ``trials`` keys at (length, depth) with its 95% Wilson interval (``accuracy_low``,
    ``accuracy_high``), the ``correct`` count, the ``answers`` and the achieved depth.

    The filler before the needle is the same for every key, so it is read once and the cache forked per key
    (:func:`_generate_answers`): the answers are the ones each prompt gives when read alone."""
    if trials < 1:
        raise ConfigError(f"trials must be >= 1, got {trials}")
    pad_id = answer_pad_id(tokenizer)
    prompts = [build_prompt(tokenizer, length, depth, random_key(seed, length, depth, trial), filler_text)
               for trial in range(trials)]
    outputs = _generate_answers(
        model, [p.ids for p in prompts], new_cache, segment_size=segment_size, progress=progress,
        desc=f"passkey {length}@{depth}", max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id,
    )
    correct, answers = 0, []
    for prompt, new_ids in zip(prompts, outputs, strict=True):
        answer = tokenizer.decode(new_ids, skip_special_tokens=True)
        correct += answer_is_correct(answer, prompt.key)
        answers.append({"key": prompt.key, "answer": answer})
    low, high = wilson_interval(correct, trials)
    return {
        "accuracy": correct / trials,
        "accuracy_low": low,  # 95% Wilson score interval over the trials
        "accuracy_high": high,
        "correct": correct,
        "trials": trials,
        "achieved_depth": sum(p.depth for p in prompts) / trials,
        "answers": answers,
    }


def shared_prefix_length(prompts: Sequence[Sequence[int]], segment_size: int) -> int:
    """Tokens that can be read once for all ``prompts`` (all of one length): the longest common prefix of
    the part :func:`lococo.generate` prefills (all but the last token), cut back to the last boundary of
    its segments (:func:`lococo.generation.segment_bounds`, anchored at the end). Reading those tokens
    alone cuts and compresses them exactly as every full read does; 0 when no boundary lies in the prefix."""
    from ..generation import segment_bounds

    if len({len(ids) for ids in prompts}) != 1:
        return 0  # different lengths: different segment bounds
    n_read = len(prompts[0]) - 1
    first = prompts[0]
    common = n_read
    for ids in prompts[1:]:
        common = next((i for i in range(common) if ids[i] != first[i]), common)
    return max((stop for _, stop in segment_bounds(n_read, segment_size) if stop <= common), default=0)


def _forks_exactly(cache: Any) -> bool:
    """False when ``cache``'s policy is not :attr:`~lococo.policies.Policy.stateless` (``random``: every
    compression draws from one generator, so a prefix read once would not get the draws it gets when each
    prompt is read alone)."""
    from ..cache import CompressedCache

    return isinstance(cache, CompressedCache) and cache.policy.stateless


def _generate_answers(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    new_cache: CacheFactory,
    *,
    segment_size: int,
    share_prefix: bool = True,
    progress: bool = False,
    desc: str = "prompts",
    **generate_kwargs: Any,
) -> list[list[int]]:
    """The new tokens :func:`lococo.generate` gives for each prompt, each read through its own cache.

    With ``share_prefix`` the tokens all prompts begin with (up to a segment boundary,
    :func:`shared_prefix_length`) are read once into one cache, which is then forked for each prompt;
    :func:`lococo.generate` reads only the rest of the prompt (same segment bounds, as ``prefill`` skips
    the tokens the cache has seen) and decodes as usual. The result is the same as with ``share_prefix``
    False (every prompt read from scratch through a fresh cache): same segments, same compressions.
    """
    from ..generation import generate, prefill

    cache = new_cache()
    shared = 0
    if share_prefix and len(prompts) > 1 and _forks_exactly(cache):
        shared = shared_prefix_length(prompts, segment_size)
    if shared:
        prefill(model, torch.tensor([list(prompts[0][:shared])], dtype=torch.long), cache=cache,
                segment_size=segment_size)
    outputs = []
    for i, prompt in enumerate(tqdm(prompts, desc=desc, unit="trial", disable=not progress, leave=False)):
        ids = torch.tensor([list(prompt)], dtype=torch.long)
        own = cache.fork() if shared else cache if i == 0 else new_cache()
        out = generate(model, ids, cache=own, segment_size=segment_size, **generate_kwargs)
        outputs.append(out[0, ids.shape[1] :].tolist())
    return outputs


def _counts(record: dict) -> tuple[int, int]:
    """``(correct, trials)`` of a record (records written before ``correct`` existed: from the accuracy)."""
    trials = int(record["trials"])
    correct = record.get("correct")
    return (round(record["accuracy"] * trials) if correct is None else int(correct)), trials


def _fmt_rate(correct: int, n: int) -> str:
    low, high = wilson_interval(correct, n)
    return f"{correct / n:.2f} [{low:.2f}, {high:.2f}]"


def _keys_per_cell(records: list[dict]) -> str:
    trials = sorted({_counts(r)[1] for r in records})
    return str(trials[0]) if len(trials) == 1 else f"{trials[0]} to {trials[-1]}"


def passkey_table(records: list[dict]) -> str:
    """Markdown: how many keys stand behind each cell, then one row per cell with its accuracy, 95% Wilson
    interval and n (the body of the passkey report, in place of the generic table)."""
    if not records:
        return "(no records)\n"
    lines = [
        f"Each cell is {_keys_per_cell(records)} keys (`--trials`; n in the column correct / n): accuracy is "
        "keys found / keys asked, with its 95% Wilson score interval in brackets.",
        "",
        "| length | policy | M | B | depth | achieved depth | accuracy [95% CI] | correct / n | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        correct, n = _counts(r)
        mem = "" if r.get("mem_size") is None else r["mem_size"]
        achieved = f"{r['achieved_depth']:.3f}" if r.get("achieved_depth") is not None else ""
        seconds = f"{r['seconds']:.4g}" if r.get("seconds") is not None else ""
        lines.append(f"| {r['length']} | {r['policy']} | {mem} | {r.get('segment_size', '')} | {r['depth']:g} | "
                     f"{achieved} | {_fmt_rate(correct, n)} | {correct}/{n} | {seconds} |")
    return "\n".join(lines) + "\n"


def passkey_summary(records: list[dict]) -> str:
    """Markdown: accuracy over all depths per (policy, M, length), n = depths x trials keys, 95% Wilson
    interval."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["length"], r["policy"], r.get("mem_size")), []).append(r)
    if not groups:
        return ""
    lines = ["## Accuracy over all depths (per policy, M and length; 95% Wilson intervals)", "",
             "| length | policy | M | depths | accuracy [95% CI] | correct / n |", "|---|---|---|---|---|---|"]
    for (length, policy, mem), group in groups.items():
        correct = sum(_counts(r)[0] for r in group)
        n = sum(_counts(r)[1] for r in group)
        lines.append(f"| {length} | {policy} | {'' if mem is None else mem} | {len(group)} | "
                     f"{_fmt_rate(correct, n)} | {correct}/{n} |")
    return "\n".join(lines) + "\n"


def plot_passkey(records: list[dict], path: Path) -> None:
    """One heatmap per policy/M: accuracy by depth (rows) and length (columns), each cell annotated with its
    accuracy and, when the panel has room, ``correct/n``."""
    plt = pyplot()
    panels: dict[str, list[dict]] = {}
    for r in records:
        panels.setdefault(series_label(r), []).append(r)
    depths = sorted({r["depth"] for r in records})
    lengths = sorted({r["length"] for r in records})
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols + 1, 2.8 * rows + 0.5), squeeze=False,
                             gridspec_kw={"wspace": 0.35, "hspace": 0.6})
    image = None
    for ax, (label, panel) in zip(axes.flat, sorted(panels.items()), strict=False):
        grid = np.full((len(depths), len(lengths)), np.nan)
        for r in panel:
            grid[depths.index(r["depth"]), lengths.index(r["length"])] = r["accuracy"]
        image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
        roomy = len(lengths) <= 6 and len(depths) <= 8  # room for a second line with correct/n
        for r in panel:
            correct, n = _counts(r)
            text = f"{r['accuracy']:.2f}" + (f"\n{correct}/{n}" if roomy else "")
            ax.text(lengths.index(r["length"]), depths.index(r["depth"]), text, ha="center", va="center",
                    fontsize=6 if roomy else 5, color="white" if not 0.2 <= r["accuracy"] <= 0.8 else "black")
        ax.set_title(label, fontsize=9)
        ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], fontsize=7, rotation=30)
        ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths], fontsize=7)
        ax.set_xlabel("length", fontsize=8)
        ax.set_ylabel("depth", fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8, label="accuracy")
    fig.suptitle(f"passkey accuracy, {_keys_per_cell(records)} keys per cell", fontsize=9, y=1.0, va="bottom")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
