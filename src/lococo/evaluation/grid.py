"""The shared grid runner: ``policy x mem_size x length`` (x extra axes) cells, resumable.

A cell is a plain dict ``{"policy", "mem_size", "segment_size", "length", ...extra axes}``; ``full`` appears
once per length with ``mem_size=None``. :func:`run_grid` evaluates every cell not already in the output
JSON (same kind and configuration, see :func:`lococo.evaluation.report.load_records`), appends one record
per cell (the cell's keys plus its metrics) and rewrites the JSON atomically, the Markdown table and the
PNG plot after each cell, so an interrupted grid resumes where it stopped.

:func:`policy_caches` binds one policy to the model (for LoCoCo: fresh, untrained heads, or heads loaded
from a folder) and yields a factory of fresh caches; the heads are detached again afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from ..errors import ConfigError
from ..policies import policy_class
from .report import load_records, write_report

if TYPE_CHECKING:
    from torch import nn

    from ..cache import CompressedCache

CELL_KEYS = ("policy", "mem_size", "segment_size", "length")
"""Keys every cell and every record has; together with the extra axes they identify a cell."""

CacheFactory = Callable[[], "CompressedCache"]
CellFn = Callable[[dict[str, Any], CacheFactory], dict[str, Any]]
PlotFn = Callable[[list[dict], Path], None]


def expand_cells(
    policies: Sequence[str],
    mem_sizes: Sequence[int],
    lengths: Sequence[int],
    segment_size: int,
    extra_axes: dict[str, Sequence[Any]] | None = None,
) -> list[dict[str, Any]]:
    """Every cell of the grid, lengths outermost (short cells finish first), ``full`` once per length.

    ``extra_axes`` adds further dimensions (e.g. ``{"depth": [0.0, 0.5, 1.0]}``), innermost. The
    ``positions`` axis configures the cache: the full cache, which keeps every token, gets only its first value.
    """
    if not policies or not lengths:
        raise ConfigError("the grid needs at least one policy and one length")
    if any(m < 1 for m in mem_sizes) or any(n < 2 for n in lengths):
        raise ConfigError(f"mem sizes must be >= 1 and lengths >= 2, got {list(mem_sizes)} and {list(lengths)}")
    def combos(compresses: bool) -> list[list[tuple[str, Any]]]:
        extra = [[]]  # list of [(axis, value), ...] combinations
        for axis, values in (extra_axes or {}).items():
            values = values if compresses or axis != "positions" else list(values)[:1]
            extra = [combo + [(axis, v)] for combo in extra for v in values]
        return extra

    cells = []
    for length in lengths:
        for policy in policies:
            uses_mem_size = policy_class(policy).uses_mem_size
            extra = combos(policy_class(policy).compresses)
            if uses_mem_size and not mem_sizes:
                raise ConfigError(f"policy {policy!r} needs at least one --mem-size")
            for mem in mem_sizes if uses_mem_size else [None]:
                for combo in extra:
                    cell = {"policy": policy, "mem_size": mem, "segment_size": segment_size, "length": length}
                    cells.append({**cell, **dict(combo)})
    return cells


def cell_key(cell: dict[str, Any], extra_keys: Sequence[str] = ()) -> tuple:
    """What identifies a cell (or the record it produced) for resuming."""
    return tuple(cell.get(k) for k in (*CELL_KEYS, *extra_keys))


@contextmanager
def policy_caches(
    model: nn.Module,
    policy: str,
    mem_size: int | None,
    segment_size: int,
    *,
    heads_dir: str | Path | Sequence[str | Path] | None = None,
    seed: int = 0,
    positions: str | None = None,
) -> Iterator[CacheFactory]:
    """Bind ``policy`` to ``model`` and yield a function returning fresh caches for it (with the key-position
    scheme ``positions``, :func:`lococo.make_cache`; None: the policy's default). The function's ``positions``
    attribute says which scheme its caches use ("absolute", "reindexed" or "clamped").

    The policy takes what it uses of ``mem_size``, ``heads_dir`` (trained heads: one folder or several, one
    per M, or ``"shipped"``), ``segment_size`` and ``seed`` (:func:`lococo.policies.policy_settings`); a
    policy that attaches something to the model (LoCoCo's heads) has it removed on exit, and heads attached
    before the call are put back.
    """
    from ..compressor.heads import ATTR, detach, has_heads
    from ..generation import make_cache
    from ..policies import make_policy, policy_settings
    from ..positions import resolve_positions

    if policy_class(policy).uses_mem_size and mem_size is None:
        raise ConfigError(f"policy {policy!r} needs a mem_size")
    previous = detach(model) if has_heads(model) else None
    try:
        bound = make_policy(policy, model=model, **policy_settings(
            policy, mem_size=mem_size, heads=heads_dir or "fresh", segment_size=segment_size, seed=seed))
        scheme = resolve_positions(model, bound, positions)

        def new_cache() -> CompressedCache:
            return make_cache(model, bound, positions=scheme)

        new_cache.positions = scheme
        yield new_cache
    finally:
        if has_heads(model):
            detach(model)
        if previous is not None:
            model.add_module(ATTR, previous)  # put back the heads that were attached before


def run_grid(
    cells: Sequence[dict[str, Any]],
    evaluate: CellFn,
    model: nn.Module,
    output: str | Path,
    meta: dict[str, Any],
    *,
    plot: PlotFn | None = None,
    summary: Callable[[list[dict]], str] | None = None,
    table: Callable[[list[dict]], str] | None = None,
    heads_dir: str | Path | Sequence[str | Path] | None = None,
    seed: int = 0,
    extra_keys: Sequence[str] = (),
    desc: str = "grid",
) -> list[dict[str, Any]]:
    """Evaluate the cells not yet in ``output`` and write the report after each one.

    ``evaluate(cell, new_cache)`` returns the cell's metrics (a dict); ``new_cache()`` builds a fresh cache
    for the cell's policy (the model is set up afresh for every cell). ``summary`` and ``table`` shape the
    Markdown report (:func:`lococo.evaluation.report.write_report`). Returns every record (resumed ones
    first).
    """
    output = Path(output)
    records = load_records(output, meta)
    done = {cell_key(r, extra_keys) for r in records}
    todo = [c for c in cells if cell_key(c, extra_keys) not in done]
    if len(todo) < len(cells):
        tqdm.write(f"{desc}: resuming {output}: {len(cells) - len(todo)} of {len(cells)} cells already done")
    if not todo:
        write_report(output, meta, records, plot=plot, summary=summary, table=table)
    bar = tqdm(total=len(todo), desc=desc, unit="cell")
    for cell in todo:  # ``summary(records)`` adds a Markdown section below the table
        bar.set_postfix_str(", ".join(f"{k}={v}" for k, v in cell.items() if v is not None))
        start = time.perf_counter()
        with policy_caches(
            model, cell["policy"], cell["mem_size"], cell["segment_size"], heads_dir=heads_dir, seed=seed,
            positions=cell.get("positions"),
        ) as new_cache:
            metrics = evaluate(cell, new_cache)
        scheme = {} if "positions" in cell or not policy_class(cell["policy"]).compresses else {
            "positions": new_cache.positions}
        records.append({**cell, **scheme, **metrics, "seconds": round(time.perf_counter() - start, 3)})
        write_report(output, meta, records, plot=plot, summary=summary, table=table)
        bar.update(1)
    bar.close()
    return records


def series_label(record: dict[str, Any]) -> str:
    """``policy``, ``policy M=...`` or ``policy M=... reindexed`` (or ``clamped``): the legend/panel label of a
    record's (policy, mem_size, positions)."""
    label = record["policy"] if record.get("mem_size") is None else f"{record['policy']} M={record['mem_size']}"
    return label + position_suffix(record)


def position_suffix(record: dict[str, Any]) -> str:
    """`` reindexed`` / `` clamped`` for a record read with that scheme, "" for absolute positions."""
    scheme = record.get("positions")
    return f" {scheme}" if scheme and scheme != "absolute" else ""


def pyplot():
    """matplotlib's pyplot with the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
