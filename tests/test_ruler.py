"""``lococo eval ruler``: prompt splitting, both settings, scoring glue, reports, the CLI on a tiny model.

Most tests use hand-made tasks and samples and need neither the ``ruler`` extra nor RULER's wheel. The tests at
the end run RULER's own task definitions, metric and one generator (variable tracking, the fastest): they are
skipped unless the extra is installed (``pip install 'lococo[ruler]'``) and RULER's wheel can be fetched.
"""

from __future__ import annotations

import argparse
import io
import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from lococo.errors import ConfigError, FetchError, LococoError
from lococo.evaluation import cli as eval_cli
from lococo.evaluation import ruler
from lococo.evaluation.grid import policy_caches
from lococo.evaluation.ruler import (
    RulerSample,
    RulerTask,
    build_prompt,
    check_tasks,
    evaluate_ruler,
    per_sample_scores,
    plot_ruler,
    postprocess_prediction,
    ruler_summary,
    ruler_table,
    split_question,
)

# ------------------------------------------------------------------------------------------------ helpers


class CharTokenizer:
    """Character-level tokenizer for the 128-token tiny models (ASCII; 0 pad, 2 BOS, 3 EOS); BOS optional."""

    pad_token_id, eos_token_id = 0, 3

    def __init__(self, bos: bool = True) -> None:
        self.bos_token_id = 2 if bos else None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = [ord(c) if 32 <= ord(c) < 128 else 32 for c in text]
        return [self.bos_token_id, *ids] if add_special_tokens and self.bos_token_id is not None else ids

    def __call__(self, texts: list[str], add_special_tokens: bool = False, verbose: bool = True) -> dict:
        return {"input_ids": [self.encode(t, add_special_tokens) for t in texts]}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(chr(i) for i in ids if i >= 32)


class WordTokenizer(CharTokenizer):
    """One token per whitespace-separated word: RULER's generators size haystacks in far fewer calls."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [4 + len(w) % 100 for w in text.split()]


# Templates shaped like RULER's families (a field before and after {context}; the answer prefix repeats {query}).
NEEDLE = RulerTask(
    name="needle", family="niah", args={"type_haystack": "repeat"}, tokens_to_generate=8,
    template="Some magic {type_needle_v} are hidden below.\n{context}\nWhat are all the magic {type_needle_v} for "
    "{query}?", answer_prefix=" The magic {type_needle_v} for {query} are", metric="string_match_all",
)  # fmt: skip
WORDS = RulerTask(
    name="words", family="common_words_extraction", args={}, tokens_to_generate=8,
    template="Below is a list of words.\n{context}\nQuestion: Which words are the most common?{query}",
    answer_prefix=" Answer: the most common words are:", metric="string_match_all",
)  # fmt: skip
DOCS = RulerTask(
    name="docs", family="qa", args={}, tokens_to_generate=8,
    template="Answer from the documents.\n\n{context}\n\nAnswer from the documents.\n\nQuestion: {query}",
    answer_prefix=" Answer:", metric="string_match_part",
)  # fmt: skip
TASKS = {t.name: t for t in (NEEDLE, WORDS, DOCS)}


def _sample(task: RulerTask, text: str, outputs: tuple[str, ...], index: int = 0, length: int = 400) -> RulerSample:
    start, answer = split_question(task, text)
    return RulerSample(task.name, length, index, text, outputs, len(text) + task.tokens_to_generate, start, answer)


def _needle_text(key: str = "blue-cat", value: str = "4821", filler: int = 12) -> str:
    """A prompt as RULER's needle generator writes it for one needle: the question reworded ("are all" -> "is")."""
    context = "\n".join(["The grass is green. The sky is blue."] * (filler // 2) + [f"The magic number for {key} is: "
                        f"{value}."] + ["The grass is green. The sky is blue."] * (filler - filler // 2))
    template = (NEEDLE.template + NEEDLE.answer_prefix).replace("Some", "A").replace("are all", "is")
    return template.replace("are", "is").format(type_needle_v="number", context=context, query=key)


# ------------------------------------------------------------------------------------------------ prompts


def test_split_question_finds_a_reworded_question_and_the_answer_prefix():
    text = _needle_text()
    start, answer = split_question(NEEDLE, text)
    assert text[:start].endswith("The grass is green. The sky is blue.")
    assert text[start:answer] == "\nWhat is the magic number for blue-cat?"
    assert text[answer:] == " The magic number for blue-cat is"
    sample = _sample(NEEDLE, text, ("4821",))
    assert sample.context + sample.question == text
    assert sample.query == "What is the magic number for blue-cat?"
    assert "4821" in sample.context and "4821" not in sample.question


def test_split_question_takes_the_last_template_when_an_example_repeats_it():
    example = WORDS.template.format(context="1. ant 2. ant 3. bee", query="") + " 1. ant"
    real = WORDS.template.format(context="1. cow 2. dog 3. cow", query="") + WORDS.answer_prefix
    text = example + "\n" + real
    sample = _sample(WORDS, text, ("cow",))
    assert sample.context == example + "\nBelow is a list of words.\n1. cow 2. dog 3. cow"
    assert sample.query == "Question: Which words are the most common?"
    assert sample.question.endswith(WORDS.answer_prefix)


def test_split_question_keeps_document_text_that_looks_like_the_question_in_the_context():
    context = "Document 1:\nQuestion: is this a question?\n\nDocument 2:\nParis is in France."
    text = DOCS.template.format(context=context, query="Where is Paris?") + DOCS.answer_prefix
    sample = _sample(DOCS, text, ("France",))
    assert sample.context.endswith("Paris is in France.")
    assert sample.query == "Answer from the documents.\n\nQuestion: Where is Paris?"
    assert sample.question.endswith("Where is Paris? Answer:")


def test_split_question_refuses_a_prompt_without_the_question():
    with pytest.raises(LococoError, match="cannot find the question"):
        split_question(DOCS, "a prompt of some other RULER version")


@pytest.mark.parametrize("bos", [True, False])
def test_both_settings_share_the_context_and_the_question(bos):
    tok = CharTokenizer(bos=bos)
    sample = _sample(NEEDLE, _needle_text(), ("4821",))
    agnostic = build_prompt(sample, tok, "query-agnostic")
    aware = build_prompt(sample, tok, "query-aware")
    head = [2] if bos else []
    assert agnostic.ids == head + tok.encode(sample.input)
    assert agnostic.ids[: agnostic.context_tokens] == head + tok.encode(sample.context)
    assert agnostic.ids[agnostic.context_tokens :] == tok.encode(sample.question)
    before = tok.encode(sample.query + "\n\n")
    assert aware.ids[: aware.context_tokens] == head + before + tok.encode(sample.context)
    assert aware.ids[aware.context_tokens :] == agnostic.ids[agnostic.context_tokens :]
    assert len(aware.ids) == len(agnostic.ids) + len(before)
    with pytest.raises(ConfigError, match="query-agnostic, query-aware"):
        build_prompt(sample, tok, "query-first")


# ------------------------------------------------------------------------------------------------ tasks, metric


def test_check_tasks_defaults_deduplicates_and_names_the_valid_ones():
    assert check_tasks(None, TASKS) == ["needle", "words", "docs"]
    assert check_tasks(["docs", "needle", "docs"], TASKS) == ["docs", "needle"]
    with pytest.raises(ConfigError, match=r"unknown RULER task nope, vt2; choose from needle, words, docs"):
        check_tasks(["needle", "nope", "vt2", "nope"], TASKS)


def test_postprocess_prediction_as_ruler():
    assert postprocess_prediction("  \n 4821\x00x\t7 \n") == "4821\nx\n7"
    assert postprocess_prediction("") == "" and postprocess_prediction(None) == ""


@pytest.fixture
def stand_in_metric(monkeypatch, tmp_path):
    """RULER's metric module replaced by one that records what it is given and finds each reference as is."""
    seen = []

    def per_sample(preds, refs):
        seen.append((list(preds), refs))
        return [100.0 * sum(r in p for r in ref) / len(ref) for p, ref in zip(preds, refs, strict=True)]

    module = types.SimpleNamespace(TASKS={"niah": {"metric_fn_per_sample": per_sample}})
    monkeypatch.setattr(ruler, "ruler_files", lambda: tmp_path)
    monkeypatch.setattr(ruler, "_ruler_module", lambda path, name: module)
    return seen


def test_per_sample_scores_post_process_route_by_family_and_scale_to_one(stand_in_metric):
    scores = per_sample_scores(NEEDLE, [" 4821 and 77\x01", "nothing"], [("4821", "77", "9"), ("1",)])
    assert scores == pytest.approx([2 / 3, 0.0])
    assert stand_in_metric == [(["4821 and 77", "nothing"], [["4821", "77", "9"], ["1"]])]
    with pytest.raises(KeyError):
        per_sample_scores(DOCS, ["x"], [("x",)])  # no qa entry in the stand-in: the family picks the metric


# ------------------------------------------------------------------------------------------------ evaluation


def test_evaluate_ruler_reads_the_prompt_once_and_answers_as_a_plain_generate(tiny_llama, stand_in_metric):
    tok = CharTokenizer()
    samples = [_sample(NEEDLE, _needle_text(key, value, filler=4), (value,), index=i)
               for i, (key, value) in enumerate([("red-fox", "12"), ("tan-owl", "34")])]
    with policy_caches(tiny_llama, "full", None, 64) as new_cache:
        for setting in ("query-agnostic", "query-aware"):
            record = evaluate_ruler(tiny_llama, tok, new_cache, NEEDLE, samples, setting=setting, segment_size=64,
                                    max_new_tokens=5)
            for sample, answer in zip(samples, record["answers"], strict=True):
                ids = torch.tensor([build_prompt(sample, tok, setting).ids])
                with torch.no_grad():
                    out = tiny_llama.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
                assert answer["prediction"] == tok.decode(out[0, ids.shape[1] :].tolist())
                assert answer["outputs"] == list(sample.outputs) and answer["index"] == sample.index
            assert record["samples"] == 2 and record["max_new_tokens"] == 5
            assert record["metric"] == "string_match_all" and record["family"] == "niah"
            assert record["correct"] == sum(a["score"] >= 1 for a in record["answers"])
            assert record["accuracy_low"] <= record["accuracy"] <= record["accuracy_high"]
            extra = 0 if setting == "query-agnostic" else len(samples[0].query) + 2
            assert record["prompt_tokens"] == pytest.approx(sum(len(s.input) + 1 for s in samples) / 2 + extra)


def test_evaluate_ruler_scores_references_found_in_the_answer(tiny_llama, monkeypatch, stand_in_metric):
    tok = CharTokenizer()
    samples = [_sample(NEEDLE, _needle_text(filler=2), (ref,), index=i) for i, ref in enumerate(["", "\u00e9"])]

    with policy_caches(tiny_llama, "window", 16, 32) as new_cache:
        record = evaluate_ruler(tiny_llama, tok, new_cache, NEEDLE, samples, setting="query-agnostic",
                                segment_size=32, max_new_tokens=2)
    # "" is in every answer, "\u00e9" (not ASCII: the tokenizer never decodes it) in none
    assert [a["score"] for a in record["answers"]] == [1.0, 0.0]
    assert record["score"] == 0.5 and record["correct"] == 1 and record["accuracy"] == 0.5
    assert record["score_low"] == 0.0 and record["score_high"] == 1.0
    with pytest.raises(ConfigError, match="no RULER samples"):
        evaluate_ruler(tiny_llama, tok, new_cache, NEEDLE, [], setting="query-agnostic", segment_size=32)


def test_the_question_is_read_after_the_whole_context_never_in_one_of_its_segments(tiny_llama, stand_in_metric):
    """So the context's last compression happens without the question (query-agnostic)."""
    tok = CharTokenizer()
    sample = _sample(NEEDLE, _needle_text(filler=6), ("x",))
    seen_at_question = []

    def counting_cache():
        cache = new_cache()
        original = cache.update

        def update(keys, values, layer_idx, *args, **kwargs):
            if layer_idx == 0:
                seen_at_question.append(cache.get_seq_length())
            return original(keys, values, layer_idx, *args, **kwargs)

        cache.update = update
        return cache

    with policy_caches(tiny_llama, "window", 16, 32) as new_cache:
        evaluate_ruler(tiny_llama, tok, counting_cache, NEEDLE, [sample], setting="query-agnostic",
                       segment_size=32, max_new_tokens=1)
    prompt = build_prompt(sample, tok, "query-agnostic")
    # one forward starts exactly where the context ends: no segment holds both context and question tokens
    assert prompt.context_tokens in seen_at_question
    assert seen_at_question == sorted(seen_at_question) and seen_at_question[-1] == len(prompt.ids) - 1


# ------------------------------------------------------------------------------------------------ reports


def _record(task: str, score: float, correct: int, n: int = 4, policy: str = "tova", mem: int | None = 128,
            setting: str = "query-agnostic", length: int = 4096) -> dict:
    return {"policy": policy, "mem_size": mem, "segment_size": 512, "length": length, "task": task,
            "setting": setting, "score": score, "score_low": max(0.0, score - 0.2), "score_high": min(1.0, score + 0.2),
            "accuracy": correct / n, "accuracy_low": 0.1, "accuracy_high": 0.9, "correct": correct, "samples": n,
            "prompt_tokens": 3833.4, "seconds": 61.234}


def test_table_and_summary_show_intervals_counts_and_the_mean_over_tasks():
    records = [_record("vt", 0.75, 2), _record("qa_1", 0.25, 1), _record("vt", 1.0, 4, policy="full", mem=None),
               _record("vt", 0.5, 2, setting="query-aware")]
    table = ruler_table(records)
    assert "| 4096 | query-agnostic | vt | tova | 128 | 512 | 0.75 [0.55, 0.95] | 0.50 [0.10, 0.90] | 2/4 | 3833 |" \
        in table
    assert "| 4096 | query-agnostic | vt | full |  | 512 | 1.00 [0.80, 1.00] |" in table
    assert table.count("\n| 4096 |") == 4
    summary = ruler_summary(records)
    assert "| 4096 | query-agnostic | tova M=128 | 2 | 0.500 |" in summary
    assert "| 4096 | query-aware | tova M=128 | 1 | 0.500 |" in summary
    assert "| 4096 | query-agnostic | full | 1 | 1.000 |" in summary
    assert ruler_table([]) == "(no records)\n" and ruler_summary([]) == ""
    one = {**records[0], "score_low": None, "score_high": None, "positions": "reindexed"}
    assert "| tova reindexed | 128 | 512 | 0.75 | 0.50 [0.10, 0.90] |" in ruler_table([one])


def test_heatmap_has_one_panel_per_length_and_setting_with_the_mean_row(tmp_path, monkeypatch):
    from lococo.evaluation import grid

    records = [_record(t, s, 1, setting=st, length=n) for n in (4096, 8192) for st in ("query-agnostic", "query-aware")
               for t, s in (("vt", 0.5), ("cwe", 0.0))]
    records.append(_record("vt", 1.0, 4, policy="full", mem=None))
    plt = grid.pyplot()
    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig: figures.append(fig))
    plot_ruler(records, tmp_path / "ruler.png")
    assert (tmp_path / "ruler.png").stat().st_size > 0
    panels = {ax.get_title(): ax for ax in figures[0].axes if ax.get_title()}
    assert sorted(panels) == sorted(f"length {n}, {st}" for n in (4096, 8192) for st in ("query-agnostic", "query-aware"))
    ax = panels["length 4096, query-agnostic"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["vt", "cwe", "mean"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["tova M=128", "full"]
    grid_values = np.ma.filled(ax.images[0].get_array(), np.nan)
    np.testing.assert_allclose(grid_values, [[0.5, 1.0], [0.0, np.nan], [0.25, 1.0]])
    assert np.isnan(np.ma.filled(panels["length 8192, query-aware"].images[0].get_array(), np.nan)[:, 1]).all()
    close(figures[0])


# ------------------------------------------------------------------------------------------------ generator plumbing


def test_generate_samples_checks_its_arguments_before_running_anything(monkeypatch):
    monkeypatch.setattr(ruler, "_check_generator_deps", lambda: pytest.fail("should not get this far"))
    with pytest.raises(ConfigError, match="samples must be >= 1"):
        ruler.generate_samples(NEEDLE, CharTokenizer(), [4096], 0)
    with pytest.raises(ConfigError, match=r"exceed the task's answer budget \(8 tokens for needle\)"):
        ruler.generate_samples(NEEDLE, CharTokenizer(), [4096, 8], 1)


def test_missing_generator_dependencies_name_the_extra(monkeypatch):
    real = ruler.importlib.util.find_spec
    monkeypatch.setattr(ruler.importlib.util, "find_spec", lambda m: None if m == "wonderwords" else real(m))
    with pytest.raises(ConfigError, match=r"need wonderwords: pip install 'lococo\[ruler\]'"):
        ruler._check_generator_deps()


@pytest.mark.parametrize("line", ["Num haystack: 0", "Num noises: 0", "num_words: -10", "Number of documents: 0"])
def test_a_generator_that_fits_nothing_is_stopped(line):
    out = io.StringIO()
    watch = ruler._PrintWatch(out)
    watch.write("Max length 200 | Current length 900 | Haystack: 25\n")
    watch.write("Num haystack: 25\n")  # fits: passes through
    with pytest.raises(ruler._TooShort) as info:
        watch.write(line[:5])
        watch.write(line[5:] + "\n")
    assert info.value.line == line and out.getvalue().endswith(line + "\n")


# ------------------------------------------------------------------------------------------------ CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lococo")
    eval_cli.register(parser.add_subparsers(dest="command"))
    return parser


def test_cli_defaults():
    args = _parser().parse_args(["eval", "ruler"])
    assert args.task is None and args.length == [4096, 8192] and args.samples == 20 and args.sample_seed == 42
    assert args.setting == ["query-agnostic", "query-aware"] and args.max_new_tokens is None
    assert args.output == Path("reports/ruler.json")
    assert eval_cli.RULER_SETTINGS == ruler.SETTINGS and eval_cli.DEFAULT_RULER_SAMPLE_SEED == ruler.DEFAULT_SAMPLE_SEED
    with pytest.raises(SystemExit):
        _parser().parse_args(["eval", "ruler", "--setting", "query-first"])


@pytest.fixture
def fake_ruler(monkeypatch, tiny_llama, stand_in_metric):
    """The CLI on the tiny model with the hand-made tasks and samples: no RULER, no extra."""
    made = []

    class Samples:
        def __init__(self, tokenizer, lengths, num_samples, seed, *, log=None):
            made.append((list(lengths), num_samples, seed))
            self.num_samples = num_samples

        def get(self, task, length):
            return [_sample(NEEDLE, _needle_text(f"k{i}", str(i), filler=4), (str(i),), index=i, length=length)
                    for i in range(self.num_samples)]

    monkeypatch.setattr(eval_cli, "_load_model", lambda args: (tiny_llama, CharTokenizer()))
    monkeypatch.setattr(ruler, "load_tasks", lambda: {"needle": NEEDLE, "other": NEEDLE})
    monkeypatch.setattr(ruler, "RulerSamples", Samples)
    return made


def test_cli_end_to_end_writes_json_markdown_png_and_resumes(fake_ruler, tmp_path, monkeypatch):
    out = tmp_path / "ruler.json"
    argv = ["eval", "ruler", "--task", "needle", "--length", "300", "--samples", "2", "--max-new-tokens", "2",
            "--policy", "full", "window", "--mem-size", "16", "--segment-size", "64", "--output", str(out),
            "--no-progress"]
    args = _parser().parse_args(argv)
    assert args._run(args) == 0
    assert fake_ruler == [([300], 2, 42)]
    records = json.loads(out.read_text())["records"]
    assert [(r["policy"], r["setting"]) for r in records] == [
        ("full", "query-agnostic"), ("full", "query-aware"), ("window", "query-agnostic"), ("window", "query-aware")]
    assert all(r["task"] == "needle" and r["samples"] == 2 and len(r["answers"]) == 2 for r in records)
    md = out.with_suffix(".md").read_text()
    assert "| 300 | query-aware | needle | window reindexed | 16 | 64 |" in md and "Mean score over the tasks" in md
    assert out.with_suffix(".png").stat().st_size > 0
    monkeypatch.setattr(ruler, "evaluate_ruler", lambda *a, **k: pytest.fail("a finished cell ran again"))
    args = _parser().parse_args(argv)
    assert args._run(args) == 0  # resumed: every cell is already there


@pytest.mark.parametrize(("extra", "match"), [
    (["--task", "needle", "nope"], "unknown RULER task nope; choose from needle, other"),
    (["--samples", "0"], "--samples must be >= 1"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
])  # fmt: skip
def test_cli_user_errors(fake_ruler, tmp_path, extra, match):
    args = _parser().parse_args(["eval", "ruler", "--policy", "full", "--output", str(tmp_path / "r.json"), *extra])
    with pytest.raises(ConfigError, match=match):
        args._run(args)
    assert not (tmp_path / "r.json").exists()


# ------------------------------------------------------------------------------------------------ real RULER


@pytest.fixture(scope="module")
def ruler_tasks():
    """RULER's own tasks (needs the ``ruler`` extra and RULER's wheel, fetched once into the lococo cache)."""
    for module in ("wonderwords", "nltk", "numpy", "scipy", "yaml"):
        pytest.importorskip(module)
    try:
        return ruler.load_tasks()
    except FetchError as exc:
        pytest.skip(f"RULER's wheel is not available: {exc}")


def test_ruler_tasks_are_the_standard_13_with_their_metric_and_budget(ruler_tasks):
    assert tuple(ruler_tasks) == ruler.STANDARD_TASKS
    assert {n: t.metric for n, t in ruler_tasks.items() if t.metric != "string_match_all"} == {
        "qa_1": "string_match_part", "qa_2": "string_match_part"}
    assert {t.family: t.tokens_to_generate for t in ruler_tasks.values()} == {
        "niah": 128, "variable_tracking": 30, "common_words_extraction": 120, "freq_words_extraction": 50, "qa": 32}
    assert ruler_tasks["niah_single_2"].needs_punkt and not ruler_tasks["niah_single_1"].needs_punkt
    assert all(t.script.is_file() for t in ruler_tasks.values())


def test_rulers_own_metric(ruler_tasks):
    assert per_sample_scores(ruler_tasks["niah_multivalue"], [" 11, 22 and 44.\n", ""],
                             [("11", "22", "33", "44"), ("11",)]) == pytest.approx([0.75, 0.0])
    assert per_sample_scores(ruler_tasks["qa_1"], [" the Eiffel TOWER"], [("Louvre", "eiffel tower")]) == [1.0]
    assert per_sample_scores(ruler_tasks["qa_2"], [" Paris"], [("London", "Rome")]) == [0.0]


def _format_like_ruler(task: RulerTask, context: str, query: str) -> str:
    template = task.full_template
    fields = {"context": context, "query": query, "type_needle_v": "numbers", "num_v": 5}
    if task.family == "niah" and int(task.args.get("num_needle_q", 1)) * int(task.args.get("num_needle_v", 1)) == 1:
        template = template.replace("Some", "A").replace("are all", "is").replace("are", "is")
        fields["type_needle_v"] = "number"
    return template.format(**fields)


def test_split_question_on_every_ruler_template(ruler_tasks):
    context = "Document 1:\nThe grass is green. VAR ABCDE = 12345 1. apple 2. pear"
    for task in ruler_tasks.values():
        text = _format_like_ruler(task, context, "Q-KEY")
        start, answer = split_question(task, text)
        assert text[:start].endswith(context), task.name
        assert text[start:answer].strip() and text[answer:].startswith(task.answer_prefix.split("{", 1)[0]), task.name
        assert ("Q-KEY" in text[start:answer]) == ("{query}" in task.template), task.name


def test_ruler_generator_makes_the_same_samples_for_each_length_alone_or_together(ruler_tasks):
    task, tok = ruler_tasks["vt"], WordTokenizer()
    together = ruler.generate_samples(task, tok, [1500, 1000], 2, seed=3)
    alone = ruler.generate_samples(task, tok, [1000], 2, seed=3)
    assert together[1000] == alone[1000]
    assert ruler.generate_samples(task, tok, [1000], 1, seed=3)[1000] == alone[1000][:1]  # any --samples
    assert len(together[1500][0].input.split()) > len(together[1000][0].input.split())
    for length, samples in together.items():
        assert [s.index for s in samples] == [0, 1]
        for s in samples:
            assert s.length == length and len(s.outputs) == 5
            assert s.ruler_length <= length and s.ruler_length == len(tok.encode(s.input)) + task.tokens_to_generate
            assert all(f"VAR {v} =" in s.context for v in s.outputs)  # every answer hides in the context
            assert s.query.startswith("Question: Find all variables") and s.question.endswith("they are: ")
    with pytest.raises(ConfigError, match="length 500 is too short for RULER's vt"):  # its few-shot example fills it
        ruler.generate_samples(task, tok, [500], 1)
