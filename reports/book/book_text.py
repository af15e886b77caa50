"""Write the first N tokens of the bundled held-out text (essays, then plays) as a plain text file: the "book".

    python reports/book/book_text.py 131072 runs/book/book_128k.txt

The text is decoded from ``lococo.data.long_text_ids`` (documents in their fixed order, EOS between them), so
it re-tokenises to about N tokens.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lococo
from lococo.data import long_text_ids


def main() -> None:
    tokens, path = int(sys.argv[1]), Path(sys.argv[2])
    _, tokenizer = lococo.load_model()
    text = tokenizer.decode(long_text_ids(tokenizer, tokens)[0], skip_special_tokens=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"{path}: {len(text):,} characters, {len(tokenizer(text).input_ids):,} tokens")


if __name__ == "__main__":
    main()
