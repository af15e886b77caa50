"""lococo: a fixed-size, learned KV cache for Hugging Face causal language models (LoCoCo, ICML 2024).

Typical use::

    import lococo
    model, tok = lococo.load_model()                 # offline reference model by default
    lococo.attach(model, lococo.LoCoCoConfig(mem_size=128, segment_size=512))
    out = lococo.generate(model, ids, max_new_tokens=64)  # reads any length with constant memory

Names are imported on first use, so ``import lococo`` and ``lococo --help`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._version import __version__

_EXPORTS = {
    "attention": ["disable_scoring", "enable_scoring"],
    "cache": ["CompressedCache", "CompressedLayer"],
    "compressor.config": ["LoCoCoConfig"],
    "errors": ["ConfigError", "FetchError", "IncompatibleModelError", "LococoError"],
    "generation": ["generate", "make_cache", "prefill"],
    "compressor.heads": ["attach", "detach", "get_heads", "has_heads"],
    "compressor.heads_io": ["load_heads", "push_heads_to_hub", "save_heads", "shipped_heads"],
    "models": ["load_model"],
    "policies": ["Policy", "make_policy", "policy_names", "register_policy"],
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = ["__version__", *sorted(_WHERE)]


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    try:
        return importlib.import_module(f".{name}", __name__)  # submodules: lococo.generation, ...
    except ModuleNotFoundError:
        pass
    raise AttributeError(f"module 'lococo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs
    from .attention import disable_scoring, enable_scoring  # noqa: F401
    from .cache import CompressedCache, CompressedLayer  # noqa: F401
    from .compressor.config import LoCoCoConfig  # noqa: F401
    from .compressor.heads import attach, detach, get_heads, has_heads  # noqa: F401
    from .compressor.heads_io import load_heads, push_heads_to_hub, save_heads, shipped_heads  # noqa: F401
    from .errors import ConfigError, FetchError, IncompatibleModelError, LococoError  # noqa: F401
    from .generation import generate, make_cache, prefill  # noqa: F401
    from .models import load_model  # noqa: F401
    from .policies import Policy, make_policy, policy_names, register_policy  # noqa: F401
