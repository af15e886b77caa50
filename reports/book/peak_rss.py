"""Run a command and record its peak resident memory (the largest RSS of the process tree it waited for).

    python reports/book/peak_rss.py OUT.jsonl LABEL -- lococo generate --prompt-file book.txt ...

Appends ``{"label", "command", "peak_rss_mib", "seconds", "returncode"}`` to OUT.jsonl (the command's own output
goes to the terminal). Linux: ``ru_maxrss`` of the waited-for children, in KiB.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    out, label, sep, *command = sys.argv[1:]
    if sep != "--" or not command:
        raise SystemExit(__doc__)
    start = time.perf_counter()
    proc = subprocess.run(command)
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    record = {"label": label, "command": " ".join(command), "peak_rss_mib": round(peak_kib / 1024, 1),
              "seconds": round(seconds, 1), "returncode": proc.returncode}
    with Path(out).open("a") as fh:
        fh.write(json.dumps(record) + "\n")
    print(json.dumps(record))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
