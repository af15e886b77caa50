"""Exceptions raised for user mistakes (bad config, bad path, incompatible model).

The CLI prints a :class:`LococoError` as one line and exits non-zero, without a traceback.
"""


class LococoError(Exception):
    """A problem the user can fix; the message says what to do."""


class ConfigError(LococoError, ValueError):
    """An invalid configuration value."""


class IncompatibleModelError(LococoError, ValueError):
    """Heads or a policy do not fit the given model."""


class FetchError(LococoError, RuntimeError):
    """Something could not be downloaded or verified."""
