"""Reports: one JSON (``{"meta": ..., "records": [...]}``), a Markdown table and a PNG plot side by side.

The JSON is rewritten atomically after every cell, so an interrupted grid resumes where it stopped
(:func:`load_records` returns the finished cells when the configuration is the same).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path

import torch
import transformers

from .._version import __version__


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def run_meta(kind: str, config: dict) -> dict:
    """What produced a report: configuration, versions, commit, machine, date."""
    return {
        "kind": kind,
        "config": config,
        "versions": {"lococo": __version__, "torch": torch.__version__, "transformers": transformers.__version__},
        "git_commit": _git_commit(),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


# Options that shape only the report (its summary, where it is written), not the records: changing them keeps a
# grid's records (a report moved to another path resumes there).
REPORT_ONLY_OPTIONS = frozenset({"compare_to", "output"})


def _record_config(config: dict | None) -> dict | None:
    return None if config is None else {k: v for k, v in config.items() if k not in REPORT_ONLY_OPTIONS}


def load_records(path: Path, meta: dict) -> list[dict]:
    """Records already in ``path`` if it was produced by the same kind and configuration (options in
    ``REPORT_ONLY_OPTIONS`` aside), else []."""
    path = Path(path)
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    old = data.get("meta", {})
    if old.get("kind") != meta["kind"] or _record_config(old.get("config")) != _record_config(meta["config"]):
        return []
    return list(data.get("records", []))


def markdown_table(records: list[dict]) -> str:
    """All records as a Markdown table (columns in first-seen order, floats to 4 significant digits)."""
    if not records:
        return "(no records)\n"
    columns: list[str] = []
    for r in records:
        columns += [k for k, v in r.items() if k not in columns and not isinstance(v, dict | list)]

    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in records]
    return "\n".join(lines) + "\n"


def write_report(path: Path, meta: dict, records: list[dict], plot: Callable[[list[dict], Path], None] | None = None,
                 summary: Callable[[list[dict]], str] | None = None,
                 table: Callable[[list[dict]], str] | None = None):
    """Write ``path`` (JSON, atomically), ``path.md`` (the table, then ``summary(records)`` if given) and, with
    ``plot``, ``path.png``. ``table(records)`` replaces the generic :func:`markdown_table` (passkey: intervals
    and n per cell)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"meta": meta, "records": records}, indent=2) + "\n")
    os.replace(tmp, path)
    header = f"# {meta['kind']} report\n\nCommand configuration: `{json.dumps(meta['config'])}`\n\n"
    extra = summary(records) if summary is not None and records else ""
    body = (table or markdown_table)(records)
    path.with_suffix(".md").write_text(header + body + ("\n" + extra if extra else ""))
    if plot is not None and records:
        plot(records, path.with_suffix(".png"))
