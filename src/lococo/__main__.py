"""``python -m lococo``: the command-line interface."""

import sys

from lococo.commands.cli import main

if __name__ == "__main__":
    sys.exit(main())
