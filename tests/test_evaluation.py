"""Evaluation suite on tiny random models: perplexity, the resumable grid, passkey, CLI, lm-eval adapter."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import lococo
from lococo.errors import ConfigError
from lococo.evaluation import cli as eval_cli
from lococo.evaluation.grid import cell_key, expand_cells, policy_caches, run_grid
from lococo.evaluation.passkey import (
    answer_is_correct,
    build_prompt,
    passkey_accuracy,
    passkey_summary,
    passkey_table,
    plot_passkey,
    random_key,
    shared_prefix_length,
)
from lococo.evaluation.perplexity import (
    bucket_edges,
    eval_sequences,
    perplexity,
    plot_perplexity,
    score_tokens,
)
from lococo.evaluation.report import run_meta
from lococo.evaluation.stats import wilson_interval

DATA = Path(__file__).parent / "data"


class CharTokenizer:
    """A character-level tokenizer for the 128-token tiny models (ASCII; 0 pad, 2 BOS, 3 EOS)."""

    pad_token_id, bos_token_id, eos_token_id = 0, 2, 3
    eos_token = "\x03"

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = [ord(c) if 32 <= ord(c) < 128 else 32 for c in text]
        return [self.bos_token_id, *ids] if add_special_tokens else ids

    def __call__(self, texts: list[str], add_special_tokens: bool = False, verbose: bool = True) -> dict[str, list[list[int]]]:
        return {"input_ids": [self.encode(t, add_special_tokens) for t in texts]}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(chr(i) for i in ids if i >= 32)


def random_ids(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(4, 128, (1, n), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ perplexity


def test_full_ppl_equals_plain_forward(tiny_llama):
    ids = random_ids(100)
    with torch.no_grad():
        logits = tiny_llama(input_ids=ids).logits[0].float()
    expected = math.exp(F.cross_entropy(logits[:-1], ids[0, 1:]).item())
    with policy_caches(tiny_llama, "full", None, 32) as new_cache:
        result = perplexity(tiny_llama, [ids], new_cache, segment_size=32, progress=False)
    assert result["tokens"] == 99
    assert result["ppl"] == pytest.approx(expected, rel=1e-4)
    assert result["nll"] == pytest.approx(math.log(expected), rel=1e-4)


def test_score_tokens_continues_from_previous_logits(tiny_llama):
    ids = random_ids(40, seed=1)
    with policy_caches(tiny_llama, "full", None, 16) as new_cache:
        whole = score_tokens(tiny_llama, ids, new_cache(), 16)
        cache = new_cache()
        head = score_tokens(tiny_llama, ids[:, :25], cache, 16)
        tail = score_tokens(tiny_llama, ids[:, 25:], cache, 16, prev_logits=head.last_logits)
    assert whole.logprobs.shape == (39,)
    torch.testing.assert_close(torch.cat([head.logprobs, tail.logprobs]), whole.logprobs, rtol=1e-4, atol=1e-4)


def test_loss_by_bucket_and_compressing_policy(tiny_llama):
    assert bucket_edges(600) == [0, 512, 600]
    assert bucket_edges(4096) == [0, 512, 1024, 2048, 4096]
    with policy_caches(tiny_llama, "window", 16, 64) as new_cache:
        result = perplexity(tiny_llama, [random_ids(600, seed=s) for s in range(2)], new_cache, segment_size=64,
                            progress=False)
    assert list(result["loss_by_bucket"]) == ["0-512", "512-600"]
    assert math.isfinite(result["ppl"]) and result["tokens"] == 2 * 599
    per_doc = result["doc_loss_by_bucket"]  # each document's own buckets (equal lengths: their mean is the total)
    assert len(per_doc) == 2 and per_doc[0] != per_doc[1]
    for label, loss in result["loss_by_bucket"].items():
        assert loss == pytest.approx((per_doc[0][label] + per_doc[1][label]) / 2)


def test_eval_sequences_truncate_and_concatenate():
    docs = [[1] * 3, [2] * 4, [3] * 10, [4] * 2]
    seqs = eval_sequences(docs, 6)
    assert [s.tolist() for s in seqs] == [[[1, 1, 1, 2, 2, 2]], [[3] * 6]]
    assert len(eval_sequences(docs, 6, limit=1)) == 1
    assert eval_sequences(docs, 100) == []


# ------------------------------------------------------------------------------------------------ grid


def test_expand_cells_runs_full_once_per_length():
    cells = expand_cells(["full", "window"], [16, 32], [64, 128], 32, {"depth": [0.0, 1.0]})
    assert len(cells) == 2 * (1 + 2) * 2
    assert {c["mem_size"] for c in cells if c["policy"] == "full"} == {None}
    assert len({cell_key(c, ["depth"]) for c in cells}) == len(cells)
    cells = expand_cells(["full", "window"], [16], [64], 32, {"positions": ["absolute", "reindexed"]})
    assert [(c["policy"], c["positions"]) for c in cells] == [
        ("full", "absolute"), ("window", "absolute"), ("window", "reindexed")]  # the full cache ignores the axis


def test_lococo_cell_attaches_fresh_heads_and_detaches(tiny_llama):
    with policy_caches(tiny_llama, "lococo", 16, 32) as new_cache:
        assert lococo.get_heads(tiny_llama).config.mem_size == 16
        assert new_cache().policy.mem_size == 16
    assert not lococo.has_heads(tiny_llama)


def test_heads_dir_loads_trained_heads(tiny_llama, tmp_path):
    lococo.attach(tiny_llama, lococo.LoCoCoConfig(mem_size=16, segment_size=32))
    lococo.save_heads(tiny_llama, tmp_path / "heads")
    saved = {k: v.clone() for k, v in lococo.get_heads(tiny_llama).state_dict().items()}
    lococo.detach(tiny_llama)
    with policy_caches(tiny_llama, "lococo", 16, 32, heads_dir=tmp_path / "heads"):
        loaded = lococo.get_heads(tiny_llama).state_dict()
        assert all(torch.equal(saved[k], loaded[k].to(saved[k].dtype)) for k in saved)
    assert not lococo.has_heads(tiny_llama)
    with pytest.raises(ConfigError, match="mem_size=16"), policy_caches(
        tiny_llama, "lococo", 32, 32, heads_dir=tmp_path / "heads"
    ):
        pass
    assert not lococo.has_heads(tiny_llama)


def test_several_heads_folders_each_cell_takes_its_mem_size(tiny_llama, tmp_path):
    folders = []
    for mem in (16, 32):
        lococo.attach(tiny_llama, lococo.LoCoCoConfig(mem_size=mem, segment_size=32))
        folders.append(lococo.save_heads(tiny_llama, tmp_path / f"m{mem}"))
        lococo.detach(tiny_llama)
    for mem in (32, 16):
        with policy_caches(tiny_llama, "lococo", mem, 32, heads_dir=folders) as new_cache:
            assert lococo.get_heads(tiny_llama).config.mem_size == mem
            assert new_cache().policy.mem_size == mem
    with pytest.raises(ConfigError, match=r"mem_size=64 .*found .*mem_size=16"), policy_caches(
        tiny_llama, "lococo", 64, 32, heads_dir=folders
    ):
        pass
    with pytest.raises(ConfigError, match="no trained heads"), policy_caches(
        tiny_llama, "lococo", 16, 32, heads_dir=["shipped"]  # lococo ships nothing for tiny models
    ):
        pass
    assert not lococo.has_heads(tiny_llama)


def test_grid_writes_reports_and_resumes(tiny_llama, tmp_path):
    output = tmp_path / "ppl.json"
    cells = expand_cells(["full", "window", "lococo"], [16], [64, 96], 32)
    meta = run_meta("ppl", {"test": True})
    calls = []

    def evaluate(cell, new_cache):
        calls.append(cell)
        ids = random_ids(cell["length"])
        return perplexity(tiny_llama, [ids], new_cache, cell["segment_size"], progress=False)

    records = run_grid(cells[:4], evaluate, tiny_llama, output, meta, plot=plot_perplexity)
    assert len(calls) == 4 and len(records) == 4
    data = json.loads(output.read_text())
    assert data["meta"]["config"] == {"test": True} and len(data["records"]) == 4
    assert {"torch", "transformers", "lococo"} <= set(data["meta"]["versions"])
    assert output.with_suffix(".md").read_text().count("\n| ") >= 4
    assert output.with_suffix(".png").stat().st_size > 0

    records = run_grid(cells, evaluate, tiny_llama, output, meta, plot=plot_perplexity)  # resumes
    assert len(calls) == len(cells) == len(records) == 6
    assert [r["policy"] for r in records if r["mem_size"] is None] == ["full", "full"]
    run_grid(cells, evaluate, tiny_llama, output, meta)
    assert len(calls) == 6  # nothing left to do

    run_grid(cells[:1], evaluate, tiny_llama, output, run_meta("ppl", {"test": False}))
    assert len(calls) == 7  # another configuration starts afresh


# ------------------------------------------------------------------------------------------------ passkey


@pytest.mark.parametrize("depth", [0.0, 0.3, 0.5, 1.0])
def test_passkey_prompt_puts_key_at_depth(depth):
    tok = CharTokenizer()
    prompt = build_prompt(tok, 1000, depth, "12345")
    assert len(prompt.ids) == 1000
    needle = tok.decode(prompt.ids[prompt.needle_start : prompt.needle_end])
    assert needle.count("12345") == 2
    assert tok.decode(prompt.ids).count("12345") == 2
    assert prompt.depth == pytest.approx(depth, abs=1 / prompt.filler_tokens)
    assert tok.decode(prompt.ids).endswith("The pass key is")


def test_passkey_prompt_too_short_and_keys():
    with pytest.raises(ConfigError, match="too short"):
        build_prompt(CharTokenizer(), 50, 0.5, "12345")
    assert random_key(0, 1024, 0.5, 0) == random_key(0, 1024, 0.5, 0)
    assert len({random_key(0, 1024, 0.5, t) for t in range(20)}) > 1
    assert answer_is_correct(" 12345. Remember", "12345") and not answer_is_correct(" 1234", "12345")


def test_passkey_accuracy_and_heatmap(tiny_llama, tmp_path):
    records = []
    with policy_caches(tiny_llama, "streaming", 32, 64) as new_cache:
        for depth in (0.0, 1.0):
            metrics = passkey_accuracy(
                tiny_llama, CharTokenizer(), new_cache, length=300, depth=depth, trials=2, segment_size=64,
                max_new_tokens=3, progress=False,
            )
            records.append({"policy": "streaming", "mem_size": 32, "length": 300, "depth": depth, **metrics})
    assert all(0.0 <= r["accuracy"] <= 1.0 and len(r["answers"]) == 2 for r in records)
    for r in records:  # the count, n and the 95% Wilson interval travel with the record
        assert r["trials"] == 2 and r["accuracy"] == r["correct"] / 2
        assert (r["accuracy_low"], r["accuracy_high"]) == wilson_interval(r["correct"], 2)
        assert r["accuracy_low"] <= r["accuracy"] <= r["accuracy_high"] and r["accuracy_high"] - r["accuracy_low"] > 0.5
    plot_passkey(records, tmp_path / "passkey.png")
    assert (tmp_path / "passkey.png").stat().st_size > 0


def test_shared_prefix_length_stops_at_a_segment_boundary():
    a, b = list(range(10)), [*range(6), 99, 98, 97, 96]  # first difference at token 6
    assert shared_prefix_length([a, b], 3) == 6  # reads 9 tokens: (0, 3), (3, 6), (6, 9)
    assert shared_prefix_length([a, b], 4) == 5  # (0, 1), (1, 5), (5, 9)
    assert shared_prefix_length([a, b], 7) == 2  # (0, 2), (2, 9)
    assert shared_prefix_length([a, [1, *a[1:]]], 3) == 0  # nothing in common
    assert shared_prefix_length([a, a[:-1] + [42]], 4) == 9  # only the last token (never prefilled) differs
    assert shared_prefix_length([a, b[:9]], 3) == 0  # different lengths


@pytest.mark.parametrize(("policy", "mem_size"), [("tova", 16), ("h2o", 16), ("full", None)])
def test_passkey_shared_prefix_is_exactly_reading_each_prompt_alone(tiny_llama, policy, mem_size, monkeypatch):
    from lococo.evaluation import passkey as passkey_mod

    tok, segment = CharTokenizer(), 32
    prompts = [build_prompt(tok, 300, 0.6, random_key(0, 300, 0.6, t)).ids for t in range(3)]
    shared = shared_prefix_length(prompts, segment)
    assert shared >= 4 * segment and (300 - 1 - shared) % segment == 0
    fed = []
    hook = tiny_llama.register_forward_pre_hook(lambda m, a, kw: fed.append(kw["input_ids"].shape[1]), with_kwargs=True)
    try:
        with policy_caches(tiny_llama, policy, mem_size, segment) as new_cache:
            made = []

            def counting_cache():
                made.append(new_cache())
                return made[-1]

            kwargs = dict(segment_size=segment, max_new_tokens=4, do_sample=False, pad_token_id=0)
            alone = passkey_mod._generate_answers(tiny_llama, prompts, counting_cache, share_prefix=False, **kwargs)
            fed_alone, fed[:] = sum(fed), []
            together = passkey_mod._generate_answers(tiny_llama, prompts, counting_cache, **kwargs)
            assert together == alone and all(len(a) == 4 for a in alone)
            assert sum(fed) == fed_alone - 2 * shared  # the prefix is read once instead of three times
            assert len(made) == 4  # 3 fresh caches, then one shared one, forked per prompt
            if policy != "full":
                assert made[-1].compressed_layers[0].compressions > 0  # compressed inside the shared prefix

            # the caches after the prompt are bit-identical, and so are the last logits
            base = new_cache()
            lococo.prefill(tiny_llama, torch.tensor([prompts[0][:shared]]), cache=base, segment_size=segment)
            for ids in prompts:
                ids = torch.tensor([ids[:-1]])
                a = lococo.prefill(tiny_llama, ids, cache=new_cache(), segment_size=segment)
                b = lococo.prefill(tiny_llama, ids, cache=base.fork(), segment_size=segment)
                assert torch.equal(a.logits, b.logits)
                for la, lb in zip(a.cache.layers, b.cache.layers, strict=True):
                    assert torch.equal(la.keys, lb.keys) and torch.equal(la.values, lb.values)
            assert base.get_seq_length() == shared  # forks leave the shared cache alone

            # and the records of the grid are the ones of the plain path
            cell = dict(length=300, depth=0.6, trials=3, segment_size=segment, max_new_tokens=4, progress=False)
            shared_record = passkey_accuracy(tiny_llama, tok, new_cache, **cell)
            original = passkey_mod._generate_answers
            monkeypatch.setattr(passkey_mod, "_generate_answers",
                                lambda *a, **kw: original(*a, **{**kw, "share_prefix": False}))
            assert passkey_accuracy(tiny_llama, tok, new_cache, **cell) == shared_record
    finally:
        hook.remove()


def test_passkey_random_policy_reads_each_prompt_alone(tiny_llama):
    from lococo.evaluation import passkey as passkey_mod

    with policy_caches(tiny_llama, "random", 16, 32) as new_cache:
        assert not passkey_mod._forks_exactly(new_cache())  # its draws depend on every compression before
        made = []
        prompts = [build_prompt(CharTokenizer(), 300, 0.5, random_key(0, 300, 0.5, t)).ids for t in range(2)]
        passkey_mod._generate_answers(tiny_llama, prompts, lambda: made.append(new_cache()) or made[-1],
                                      segment_size=32, max_new_tokens=1, do_sample=False, pad_token_id=0)
        assert len(made) == 2 and made[1].get_seq_length() >= 299
    with policy_caches(tiny_llama, "tova", 16, 32) as new_cache:
        assert passkey_mod._forks_exactly(new_cache())


def _passkey_record(length: int, depth: float, correct: int, trials: int = 10, **cell) -> dict:
    low, high = wilson_interval(correct, trials)
    return {"policy": "tova", "mem_size": 128, "segment_size": 512, "length": length, "depth": depth,
            "accuracy": correct / trials, "accuracy_low": low, "accuracy_high": high, "correct": correct,
            "trials": trials, "achieved_depth": depth, "answers": [], "seconds": 1.5, **cell}


def test_passkey_report_shows_intervals_n_and_aggregate(tmp_path):
    records = [_passkey_record(2048, 0.1, 10), _passkey_record(2048, 0.5, 5), _passkey_record(2048, 0.9, 0),
               _passkey_record(2048, 0.5, 10, policy="full", mem_size=None)]
    table = passkey_table(records)
    assert table.startswith("Each cell is 10 keys")
    assert "| 2048 | tova | 128 | 512 | 0.5 | 0.500 | 0.50 [0.24, 0.76] | 5/10 | 1.5 |" in table
    assert "| 1.00 [0.72, 1.00] | 10/10 |" in table and "| 0.00 [0.00, 0.28] | 0/10 |" in table
    summary = passkey_summary(records)  # depths pooled: 15 of 30 keys
    assert "| 2048 | tova | 128 | 3 | 0.50 [0.33, 0.67] | 15/30 |" in summary
    assert "| 2048 | full |  | 1 | 1.00 [0.72, 1.00] | 10/10 |" in summary
    assert "5 to 10 keys" in passkey_table([*records, _passkey_record(4096, 0.5, 1, trials=5)])
    # the report: intro and table at the top, the aggregate below; other kinds keep the generic table
    from lococo.evaluation.report import write_report

    out = tmp_path / "passkey.json"
    write_report(out, run_meta("passkey", {}), records, plot=plot_passkey, summary=passkey_summary,
                 table=passkey_table)
    md = out.with_suffix(".md").read_text()
    assert md.index("Each cell is 10 keys") < md.index("0.50 [0.24, 0.76]") < md.index("Accuracy over all depths")
    assert out.with_suffix(".png").stat().st_size > 0
    write_report(out, run_meta("passkey", {}), records)
    assert "| accuracy | accuracy_low |" in out.with_suffix(".md").read_text()


def test_wilson_interval_known_values_and_bad_input():
    for (k, n), expected in {(0, 10): (0.0, 0.2775), (10, 10): (0.7225, 1.0), (5, 10): (0.2366, 0.7634),
                             (3, 20): (0.0524, 0.3604), (1, 1): (0.2065, 1.0)}.items():
        assert wilson_interval(k, n) == pytest.approx(expected, abs=5e-4)
    low, high = wilson_interval(0, 1)
    assert low == 0.0 and 0.0 < high < 1.0
    assert wilson_interval(50, 100, confidence=0.5)[1] - wilson_interval(50, 100, confidence=0.5)[0] < (
        wilson_interval(50, 100)[1] - wilson_interval(50, 100)[0])  # lower confidence, narrower interval
    assert wilson_interval(np.int64(5), 10) == wilson_interval(5, 10)
    for k, n, match in [(0, 0, "n >= 1"), (1, -3, "n >= 1"), (11, 10, r"\[0, 10\]"), (-1, 10, r"\[0, 10\]"),
                        (2.5, 10, "whole number"), (1, 10.5, "whole number")]:
        with pytest.raises(ConfigError, match=match):
            wilson_interval(k, n)
    for confidence in (0.0, 1.0, 95):
        with pytest.raises(ConfigError, match="confidence"):
            wilson_interval(5, 10, confidence)


# ------------------------------------------------------------------------------------------------ CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lococo")
    eval_cli.register(parser.add_subparsers(dest="command"))
    return parser


def test_cli_parses_defaults():
    args = _parser().parse_args(["eval", "passkey", "--length", "512", "1024", "--depth", "0", "0.5"])
    assert args.mem_size == [128, 512] and args.segment_size == 512 and args.trials == 10
    assert args.output == Path("reports/passkey.json") and args.policy is None
    args = _parser().parse_args(["eval", "passkey"])
    assert args.length == [2048, 4096, 8192] and args.depth == [0.1, 0.3, 0.5, 0.7, 0.9] and args.trials == 10
    args = _parser().parse_args(["eval", "ppl", "--data", "x.txt", "--length", "8192"])
    assert args.output == Path("reports/ppl.json") and args.length == [8192]


def test_cli_ppl_end_to_end(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setattr(eval_cli, "_load_model", lambda args: (tiny_llama, CharTokenizer()))
    data = tmp_path / "doc.txt"
    data.write_text("The grass is green. The sky is blue. " * 10)
    out = tmp_path / "r" / "ppl.json"
    argv = ["eval", "ppl", "--data", str(data), "--length", "128", "--policy", "full", "window", "--mem-size", "16",
            "--segment-size", "32", "--output", str(out), "--no-progress"]
    args = _parser().parse_args(argv)
    assert args._run(args) == 0
    records = json.loads(out.read_text())["records"]
    assert [(r["policy"], r["mem_size"]) for r in records] == [("full", None), ("window", 16)]
    with pytest.raises(ConfigError, match="too few"):
        args = _parser().parse_args([*argv[:4], "--length", "100000", *argv[6:]])
        args._run(args)


def test_cli_passkey_end_to_end_reports_intervals(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setattr(eval_cli, "_load_model", lambda args: (tiny_llama, CharTokenizer()))
    out = tmp_path / "passkey.json"
    argv = ["eval", "passkey", "--length", "300", "--depth", "0.1", "0.9", "--trials", "2", "--max-new-tokens", "2",
            "--policy", "full", "window", "--mem-size", "16", "--segment-size", "64", "--output", str(out),
            "--no-progress"]
    args = _parser().parse_args(argv)
    assert args._run(args) == 0
    records = json.loads(out.read_text())["records"]
    assert len(records) == 4 and all(r["trials"] == 2 and r["accuracy_low"] <= r["accuracy_high"] for r in records)
    md = out.with_suffix(".md").read_text()
    assert "Each cell is 2 keys" in md and "Accuracy over all depths" in md and "/4 |" in md  # 2 depths x 2 keys
    with pytest.raises(ConfigError, match="--trials"):
        args = _parser().parse_args([*argv, "--trials", "0"])
        args._run(args)


# ------------------------------------------------------------------------------------------------ lm-eval


@pytest.fixture
def lm(tiny_llama):
    pytest.importorskip("lm_eval")
    from lococo.evaluation.lm_eval_adapter import LococoLM

    adapter = LococoLM(pretrained=tiny_llama, tokenizer=CharTokenizer(), policy="full", segment_size=8)
    yield adapter
    adapter.close()


def test_lm_eval_loglikelihood_matches_plain_forward(lm, tiny_llama):
    from lm_eval.api.instance import Instance

    context, continuation = "The sky is blue. The grass is green. The sky is", " blue"
    request = Instance("loglikelihood", {}, (context, continuation), 0)
    (logprob, greedy), = lm.loglikelihood([request], disable_tqdm=True)
    tok = CharTokenizer()
    ids = torch.tensor([tok.encode(context + continuation)])
    with torch.no_grad():
        logp = tiny_llama(input_ids=ids).logits[0].float().log_softmax(-1)
    n_ctx = len(context)
    expected = sum(logp[i - 1, ids[0, i]].item() for i in range(n_ctx, ids.shape[1]))
    assert logprob == pytest.approx(expected, rel=1e-4)
    assert isinstance(greedy, bool)
    text, = lm.generate_until([Instance("generate_until", {}, ("Hello", {"until": ["\n"], "max_gen_toks": 4}), 0)])
    assert isinstance(text, str) and len(text) <= 4


def test_lm_eval_task_on_tiny_model(tiny_llama, tmp_path):
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    from lococo.evaluation.lm_eval_adapter import LococoLM

    task = (DATA / "lm_eval_tasks" / "lococo_tiny.yaml").read_text()
    (tmp_path / "lococo_tiny.yaml").write_text(task.replace("tests/data/lococo_tiny.jsonl", str(DATA / "lococo_tiny.jsonl")))
    adapter = LococoLM(pretrained=tiny_llama, tokenizer=CharTokenizer(), policy="window", mem_size=16, segment_size=16)
    try:
        results = lm_eval.simple_evaluate(
            model=adapter, tasks=["lococo_tiny"], task_manager=TaskManager(include_path=str(tmp_path)),
        )
    finally:
        adapter.close()
    acc = results["results"]["lococo_tiny"]["acc,none"]
    assert 0.0 <= acc <= 1.0


def test_bootstrap_intervals_over_documents():
    from lococo.evaluation.stats import bootstrap_interval, gap_closed, paired_difference

    rng = np.random.default_rng(0)
    few, many = rng.normal(3.0, 0.2, 5), rng.normal(3.0, 0.2, 200)
    mean, low, high = bootstrap_interval(few)
    assert low < mean < high
    _, low_many, high_many = bootstrap_interval(many)
    assert high_many - low_many < high - low  # more documents, a narrower interval
    assert bootstrap_interval([3.0]) == (3.0, None, None)  # one document: no interval
    # paired: a constant shift on noisy documents is measured exactly, a separate-interval view would not be
    d, d_low, d_high = paired_difference(few + 0.05, few)
    assert d == pytest.approx(0.05) and d_low == pytest.approx(0.05) and d_high == pytest.approx(0.05)
    full, other = np.full(4, 3.0), np.full(4, 3.2)
    closed, *_ = gap_closed(np.full(4, 3.05), other, full)
    assert closed == pytest.approx(0.75)  # 0.15 of the 0.2 gap


def test_documents_needed_for_a_target_width_follow_the_square_root_law():
    from lococo.evaluation.stats import docs_for_width

    assert docs_for_width(-0.01, 0.01, 4) == 64  # 4x narrower needs 16x the documents
    assert docs_for_width(-0.001, 0.001, 10) == 10  # already narrow enough
    assert docs_for_width(None, None, 1) is None
    rng = np.random.default_rng(1)  # the projection is close to what many documents give
    from lococo.evaluation.stats import paired_difference

    pool = rng.normal(0.0, 0.02, 4000)
    _, low, high = paired_difference(pool[:16], np.zeros(16))
    projected = docs_for_width(low, high, 16)
    _, low_n, high_n = paired_difference(pool[:projected], np.zeros(projected))
    assert 0.0025 < high_n - low_n < 0.0075  # within 50%: a width from 16 documents is itself noisy


def test_cli_ppl_reports_intervals_and_paired_comparisons(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setattr(eval_cli, "_load_model", lambda args: (tiny_llama, CharTokenizer()))
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": f"Document {i}: the sky is blue and the grass is green. " * 4}) + "\n"
                            for i in range(5)))
    out = tmp_path / "ppl.json"
    argv = ["eval", "ppl", "--data", str(data), "--length", "128", "--policy", "full", "window", "streaming",
            "--mem-size", "16", "--segment-size", "32", "--num-docs", "4", "--output", str(out), "--no-progress",
            "--positions", "absolute", "reindexed"]
    args = _parser().parse_args(argv)
    assert args._run(args) == 0
    records = json.loads(out.read_text())["records"]
    assert all(r["docs"] == 4 and len(r["doc_nll"]) == 4 for r in records)
    assert all(r["ppl_low"] <= r["ppl"] <= r["ppl_high"] for r in records)
    assert sorted((r["policy"], r["positions"]) for r in records) == [
        ("full", "absolute"), ("streaming", "absolute"), ("streaming", "reindexed"), ("window", "absolute"),
        ("window", "reindexed")]
    md = out.with_suffix(".md").read_text()
    paired = [line for line in md.splitlines() if line.startswith("| 128 | 16 | ")]
    assert "Paired comparisons" in md and len(paired) == 3  # four heuristic cells, the best one the reference
    assert any("(absolute)" in line for line in paired) and any("(reindexed)" in line for line in paired)


def test_decode_fidelity_is_one_without_compression_and_measures_decoding(tiny_llama):
    from lococo.evaluation.decode import decode_fidelity
    from lococo.evaluation.perplexity import perplexity

    seqs = [random_ids(96, seed=s) for s in range(3)]
    with policy_caches(tiny_llama, "full", None, 32) as new_cache:
        exact = decode_fidelity(tiny_llama, seqs, new_cache, 32, decode_tokens=24, progress=False)
    assert exact["decode_ratio"] == pytest.approx(1.0, abs=1e-4) and exact["docs"] == 3
    assert exact["decode_ratio_low"] <= exact["decode_ratio"] <= exact["decode_ratio_high"]
    assert exact["decode_tok_s"] > 0  # the one-at-a-time pass is timed
    with policy_caches(tiny_llama, "tova", 16, 32) as new_cache:
        compressed = decode_fidelity(tiny_llama, seqs, new_cache, 32, decode_tokens=24, progress=False)
    assert compressed["decode_ppl"] != pytest.approx(compressed["segment_ppl"], rel=1e-6)  # decoding compresses
    with policy_caches(tiny_llama, "full", None, 32) as new_cache:  # the same read gives the documents' ppl
        assert exact["ppl"] == pytest.approx(perplexity(tiny_llama, seqs, new_cache, 32, progress=False)["ppl"])
    assert exact["ppl_low"] <= exact["ppl"] <= exact["ppl_high"] and len(compressed["doc_nll"]) == 3
    with pytest.raises(ConfigError, match="shorter than every sequence"):
        decode_fidelity(tiny_llama, seqs, new_cache, 32, decode_tokens=96, progress=False)


def test_forked_cache_is_independent_and_shares_the_heads(tiny_llama):
    lococo.attach(tiny_llama, lococo.LoCoCoConfig(mem_size=16, buffer=4, kernel_size=3))
    cache = lococo.prefill(tiny_llama, random_ids(60), segment_size=16).cache
    fork = cache.fork()
    assert fork.compressed_layers[0].policy.heads is cache.compressed_layers[0].policy.heads
    before = cache.compressed_layers[0].keys.clone()
    lococo.prefill(tiny_llama, random_ids(80), cache=fork, segment_size=16)  # 20 more tokens into the fork
    assert fork.get_seq_length() == 80 and cache.get_seq_length() == 60
    assert torch.equal(cache.compressed_layers[0].keys, before)


def test_cli_decode_end_to_end(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setattr(eval_cli, "_load_model", lambda args: (tiny_llama, CharTokenizer()))
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": f"Document {i}: the sky is blue. " * 8}) + "\n" for i in range(3)))
    out = tmp_path / "decode.json"
    argv = ["eval", "decode", "--data", str(data), "--length", "128", "--decode-tokens", "32", "--policy", "full",
            "window", "streaming", "--mem-size", "16", "--segment-size", "32", "--output", str(out), "--no-progress"]
    args = _parser().parse_args([*argv, "--compare-to", "window"])
    assert args._run(args) == 0
    records = json.loads(out.read_text())["records"]
    assert [r["policy"] for r in records] == ["full", "window", "streaming"] and all(r["docs"] == 3 for r in records)
    assert records[0]["decode_ratio"] == pytest.approx(1.0, abs=1e-4)
    assert out.with_suffix(".png").is_file()
    md = out.with_suffix(".md").read_text()
    for title in ("Decode fidelity, paired", "Loss of the decoded tokens, paired", "Perplexity of the whole sequence"):
        assert f"## {title}" in md
    assert "| 128 | 16 | streaming (reindexed) | window (reindexed) |" in md

    # --compare-to shapes only the summary: a rerun with another reference keeps every record
    args = _parser().parse_args([*argv, "--compare-to", "streaming"])
    assert args._run(args) == 0
    assert json.loads(out.read_text())["records"] == records
    assert "| 128 | 16 | window (reindexed) | streaming (reindexed) |" in out.with_suffix(".md").read_text()


def test_document_windows_cut_long_documents_and_remember_their_document():
    from lococo.evaluation.perplexity import document_windows, eval_sequences

    docs = [list(range(100)), list(range(100, 130)), list(range(130, 160)), list(range(200, 245))]
    seqs, groups = document_windows(docs, 40, windows_per_doc=3)
    assert [s[0, 0].item() for s in seqs] == [0, 40, 100, 200] and groups == [0, 0, 2, 3]
    assert [s.shape for s in seqs] == [(1, 40)] * 4  # short docs 1 and 2 joined; the rest of each doc dropped
    assert [s[0, 0].item() for s in eval_sequences(docs, 40)] == [0, 100, 200]  # one window each, as before
    assert len(document_windows(docs, 40, limit=2, windows_per_doc=3)[0]) == 2
    with pytest.raises(ConfigError, match="windows_per_doc"):
        document_windows(docs, 40, windows_per_doc=0)


def test_cluster_bootstrap_resamples_documents_not_windows():
    from lococo.evaluation.stats import bootstrap_interval, gap_closed, paired_difference

    rng = np.random.default_rng(0)
    doc_effect = np.repeat(rng.normal(0.0, 0.05, 6), 5)  # 6 documents x 5 windows, windows alike
    values = doc_effect + rng.normal(0.0, 0.005, 30)
    groups = np.repeat(np.arange(6), 5)
    mean, low, high = bootstrap_interval(values, groups=groups)
    _, low_naive, high_naive = bootstrap_interval(values)
    assert low < mean < high and (high - low) > 1.8 * (high_naive - low_naive)  # 30 windows are ~6 samples
    one_each = bootstrap_interval(values[::5])
    assert bootstrap_interval(values[::5], groups=np.arange(6)) == pytest.approx(one_each)  # no grouping = today's
    assert paired_difference(values + 0.1, values, groups=groups) == pytest.approx((0.1, 0.1, 0.1))
    closed = gap_closed(values + 0.05, values + 0.1, values, groups=groups)
    assert closed == pytest.approx((0.5, 0.5, 0.5))
    assert bootstrap_interval(values[:5], groups=groups[:5])[1] is None  # one document: no interval
    with pytest.raises(ConfigError, match="one group per value"):
        bootstrap_interval(values, groups=groups[:3])


def test_a_report_moved_to_another_path_resumes_there_but_not_under_another_configuration(tmp_path):
    from lococo.evaluation.report import load_records, run_meta, write_report

    config = {"policy": ["tova"], "length": [128], "output": "old/place.json", "compare_to": None}
    moved = tmp_path / "new.json"
    write_report(moved, run_meta("ppl", config), [{"policy": "tova", "ppl": 30.0}])
    assert load_records(moved, run_meta("ppl", {**config, "output": str(moved)})) == [{"policy": "tova", "ppl": 30.0}]
    assert load_records(moved, run_meta("ppl", {**config, "length": [256]})) == []
