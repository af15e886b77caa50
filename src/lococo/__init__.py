"""lococo: a fixed-size, learned KV cache for Hugging Face causal language models (LoCoCo, ICML 2024).

Typical use::

    import lococo
    model, tok = lococo.load_model()                 # offline reference model by default
    lococo.attach(model, lococo.LoCoCoConfig(mem_size=128, segment_size=512))
    out = lococo.generate(model, ids, max_new_tokens=64)  # reads any length with constant memory
"""

from ._version import __version__
from .attention import disable_scoring, enable_scoring
from .cache import CompressedCache, CompressedLayer
from .config import LoCoCoConfig
from .errors import ConfigError, FetchError, IncompatibleModelError, LococoError
from .generation import generate, make_cache, prefill
from .heads import attach, detach, get_heads, has_heads
from .heads_io import load_heads, save_heads
from .policies import Policy, make_policy, policy_names, register_policy

__all__ = [
    "CompressedCache",
    "CompressedLayer",
    "ConfigError",
    "FetchError",
    "IncompatibleModelError",
    "LoCoCoConfig",
    "LococoError",
    "Policy",
    "__version__",
    "attach",
    "detach",
    "disable_scoring",
    "enable_scoring",
    "generate",
    "get_heads",
    "has_heads",
    "load_heads",
    "make_cache",
    "make_policy",
    "policy_names",
    "prefill",
    "register_policy",
    "save_heads",
]
