"""Cache policies behind one interface, registered by name (``--policy NAME``).

`make_policy(name, model=..., mem_size=..., buffer=...)` builds one; `POLICIES` lists them.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from ..errors import ConfigError
from .base import Policy

POLICIES: dict[str, type[Policy]] = {}


def register_policy(cls: type[Policy]) -> type[Policy]:
    """Class decorator: make ``cls`` available as ``--policy cls.name``."""
    POLICIES[cls.name] = cls
    return cls


def policy_names() -> list[str]:
    return sorted(POLICIES)


def make_policy(name: str, model: nn.Module | None = None, **settings) -> Policy:
    """Build the policy ``name`` with ``settings`` (bound to ``model`` through :meth:`Policy.for_model`).

    Policies that need the model (``lococo``: its heads; ``streaming`` with ``reindex_positions``: its RoPE)
    must get it. Unknown names and settings are clear errors.
    """
    cls = policy_class(name)
    if model is not None:
        return cls.for_model(model, **settings)
    if cls.needs_model:
        raise ConfigError(f"the {name} policy needs the model: make_cache(model, {name!r}, ...)")
    return cls.build(**settings)


def policy_class(name: str) -> type[Policy]:
    """The registered class of policy ``name`` (clear error listing the names otherwise)."""
    if name not in POLICIES:
        raise ConfigError(f"unknown policy {name!r}; choose one of: {', '.join(policy_names())}")
    return POLICIES[name]


def policy_settings(name: str, **common: Any) -> dict[str, Any]:
    """The subset of the common command-line/grid settings (``mem_size``, ``heads``, ``segment_size``,
    ``seed``, ...) that policy ``name`` takes, None values dropped: callers never branch on policy names."""
    cls = policy_class(name)
    accepted = set(inspect.signature(cls.for_model).parameters) | set(inspect.signature(cls.__init__).parameters)
    if not cls.uses_mem_size:
        accepted.discard("mem_size")
    return {k: v for k, v in common.items() if v is not None and k in accepted}


def _register_builtin() -> None:
    from ..compressor import policy  # noqa: F401  (registration side effects)
    from . import baselines  # noqa: F401


_register_builtin()

__all__ = ["POLICIES", "Policy", "make_policy", "policy_class", "policy_names", "policy_settings", "register_policy"]
