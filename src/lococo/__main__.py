"""``python -m lococo``: the command-line interface."""

import sys

from lococo.cli import main

if __name__ == "__main__":
    sys.exit(main())
