"""Cache policies behind one interface, registered by name (``--policy NAME``).

`make_policy(name, model=..., mem_size=..., buffer=...)` builds one; `POLICIES` lists them.
"""

from __future__ import annotations

from collections.abc import Callable

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


def make_policy(name: str, model: nn.Module | None = None, **kwargs) -> Policy:
    """Build the policy ``name``. Policies that need the model (``lococo``: its heads; ``streaming`` with
    ``reindex_positions``: its RoPE) take it through their ``from_model`` constructor."""
    if name not in POLICIES:
        raise ConfigError(f"unknown policy {name!r}; choose one of: {', '.join(policy_names())}")
    cls = POLICIES[name]
    from_model: Callable[..., Policy] | None = getattr(cls, "from_model", None)
    if from_model is not None and model is not None:
        return from_model(model, **kwargs)
    if name == "lococo":
        raise ConfigError("the lococo policy needs the model its heads are attached to")
    return cls(**kwargs)


def _register_builtin() -> None:
    from . import baselines, lococo  # noqa: F401  (registration side effects)


_register_builtin()

__all__ = ["POLICIES", "Policy", "make_policy", "policy_names", "register_policy"]
