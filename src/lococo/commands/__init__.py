"""The ``lococo`` command line: subcommands (``cli``), ``demo`` and ``generate``; the library does the work."""
