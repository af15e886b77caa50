"""One table from the perplexity reports: every policy against M, trained LoCoCo beside untrained.

    python reports/summarize_ppl.py reports/ppl.json reports/ppl_trained.json --output reports/ppl_summary.md

The first report gives the baselines and untrained LoCoCo; later reports add rows labelled by their
``heads`` setting ("LoCoCo trained"). For each M the table also states the issue's targets: the share of the
gap between the best non-LoCoCo policy and the full cache that trained LoCoCo closes, and its distance to
the full cache in percent.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _rows(path: Path, label_lococo: str) -> dict[tuple[str, int | None, int], float]:
    data = json.loads(path.read_text())
    out = {}
    for r in data["records"]:
        name = label_lococo if r["policy"] == "lococo" else r["policy"]
        out[(name, r["mem_size"], r["length"])] = r["ppl"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("baseline", type=Path, help="report with every policy (LoCoCo untrained)")
    parser.add_argument("trained", type=Path, nargs="+", help="reports of trained LoCoCo heads")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()

    ppl = _rows(args.baseline, "lococo (untrained)")
    for path in args.trained:
        ppl.update(_rows(path, "lococo (trained)"))
    lengths = sorted({k[2] for k in ppl})
    mems = sorted({k[1] for k in ppl if k[1] is not None})
    names = list(dict.fromkeys(k[0] for k in ppl if k[1] is not None))
    lines = [f"# Held-out perplexity, from {', '.join(str(p) for p in [args.baseline, *args.trained])}", ""]
    for length in lengths:
        full = ppl.get(("full", None, length))
        lines += [f"## {length} tokens (full cache: {full:.2f})", "",
                  "| policy | " + " | ".join(f"M = {m}" for m in mems) + " |",
                  "|---|" + "---|" * len(mems)]
        for name in sorted(names, key=lambda n: ppl.get((n, mems[0], length), float("inf"))):
            cells = [f"{ppl[(name, m, length)]:.2f}" if (name, m, length) in ppl else "" for m in mems]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", "| M | best other policy | trained LoCoCo | gap to full closed | above full |",
                  "|---|---|---|---|---|"]
        for m in mems:
            others = {n: ppl[(n, m, length)] for n in names if "lococo" not in n and (n, m, length) in ppl}
            trained = ppl.get(("lococo (trained)", m, length))
            if not others or trained is None or full is None:
                continue
            best = min(others, key=others.get)
            closed = (others[best] - trained) / (others[best] - full)
            lines.append(f"| {m} | {best} {others[best]:.2f} | {trained:.2f} | {closed:+.0%} | "
                         f"{trained / full - 1:+.1%} |")
        lines.append("")
    args.output.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
