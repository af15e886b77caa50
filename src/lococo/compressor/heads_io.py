"""Heads on disk, PEFT-style: ``save_heads(model, dir)`` / ``load_heads(model, dir)``.

A heads folder holds ``lococo_config.json`` (the LoCoCoConfig, the base model's name and revision, and
an architecture fingerprint) and ``lococo_heads.safetensors`` (the weights; safetensors only, never
pickle). Loading checks the fingerprint and refuses heads trained for another architecture.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .._version import __version__
from ..errors import ConfigError, IncompatibleModelError, LococoError
from ..models_support import attention_layout
from .config import LoCoCoConfig
from .heads import LoCoCoHeads, attach, get_heads, has_heads

CONFIG_NAME = "lococo_config.json"
WEIGHTS_NAME = "lococo_heads.safetensors"


def _base_identity(model: nn.Module) -> dict:
    """The base model's name and revision; the reference model by its name, not this machine's cache path."""
    from .._fetch import cache_dir
    from ..models import REFERENCE_MODEL

    config = model.config
    name = getattr(config, "_name_or_path", None)
    if name and Path(name) == cache_dir() / "models" / REFERENCE_MODEL:
        name = REFERENCE_MODEL
    return {
        "name_or_path": name,
        "revision": getattr(config, "_commit_hash", None),
    }


def save_heads(model: nn.Module, folder: str | Path, *, dtype: torch.dtype | None = None) -> Path:
    """Write the heads attached to ``model`` into ``folder`` (atomically: a temp folder, then a rename).

    ``dtype=torch.bfloat16`` halves the size on disk; loading casts back to the configured head dtype.
    """
    heads = get_heads(model)
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "lococo_version": __version__,
        "config": heads.config.to_dict(),
        "base_model": _base_identity(model),
        "fingerprint": attention_layout(model).fingerprint(),
    }
    state = {k: (v.detach().to(dtype) if dtype else v.detach()).contiguous().cpu() for k, v in heads.state_dict().items()}
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "lococo_version": __version__})
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def resolve_heads(folder: str | Path) -> Path:
    """A local heads folder, or a hub repository id (``user/name``) downloaded into the HF cache."""
    path = Path(folder)
    if path.exists() or str(folder).count("/") != 1 or str(folder).startswith((".", "/")):
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(folder), allow_patterns=[CONFIG_NAME, WEIGHTS_NAME]))
    except Exception as exc:  # network, auth or missing repository
        raise LococoError(
            f"{folder} is neither a local heads folder nor a reachable hub repository ({type(exc).__name__})"
        ) from None


def read_heads_config(folder: str | Path) -> tuple[LoCoCoConfig, dict]:
    """The LoCoCoConfig stored in a heads folder, and the rest of its metadata."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise LococoError(f"{folder} is not a LoCoCo heads folder: {CONFIG_NAME} is missing")
    meta = json.loads(path.read_text())
    return LoCoCoConfig.from_dict(meta["config"]), meta


def load_heads(model: nn.Module, folder: str | Path, *, replace: bool = False) -> LoCoCoHeads:
    """Attach the heads saved in ``folder`` (or a hub repo id) to ``model`` after checking its architecture."""
    folder = resolve_heads(folder)
    config, meta = read_heads_config(folder)
    expected = attention_layout(model).fingerprint()
    saved = meta.get("fingerprint", {})
    if saved != expected:
        diff = {k: (saved.get(k), expected.get(k)) for k in expected if saved.get(k) != expected.get(k)}
        base = meta.get("base_model", {}).get("name_or_path")
        raise IncompatibleModelError(
            f"the heads in {folder} were trained for another architecture (base model {base!r}); "
            f"mismatch (saved, this model): {diff}. Load them onto the model they were trained for."
        )
    if has_heads(model):
        if not replace:
            raise IncompatibleModelError("this model already has LoCoCo heads; pass replace=True or detach them first")
        from .heads import detach

        detach(model)
    heads = attach(model, config)
    weights = Path(folder) / WEIGHTS_NAME
    if not weights.is_file():
        raise LococoError(f"{weights} is missing")
    try:
        state = load_file(str(weights))
    except Exception as exc:  # truncated or corrupted file: safetensors raises its own error types
        raise LococoError(f"{weights} cannot be read as safetensors ({exc}); download or save the heads again") from None
    dtype = next(heads.parameters()).dtype
    # strict=False: the heads map lococo 0.1 keys themselves (ConvCompressorHead._load_from_state_dict)
    result = heads.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise IncompatibleModelError(
            f"heads weights in {weights} do not match their config: missing {sorted(result.missing_keys)}, "
            f"unexpected {sorted(result.unexpected_keys)}"
        )
    return heads


def push_heads_to_hub(model: nn.Module, repo_id: str, *, private: bool = False, token: str | None = None,
                      dtype: torch.dtype | None = torch.bfloat16) -> str:
    """Save the heads attached to ``model`` and upload them to the Hugging Face hub as ``repo_id``.

    Needs network access to the hub (and a token with write access); returns the repository URL.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_heads(model, Path(tmp) / "heads", dtype=dtype)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="Upload LoCoCo heads")
    return str(url)


def find_heads(model: nn.Module, heads: str | Path | Sequence[str | Path], mem_size: int | None) -> Path:
    """The heads folder among ``heads`` trained with ``mem_size`` (``"shipped"``: lococo's own, if any).

    ``heads`` is one folder (or hub id) or several; a cell at M slots uses the one whose config says
    ``mem_size=M``, so one grid can evaluate trained heads at several memory sizes.
    """
    folders = [heads] if isinstance(heads, (str, Path)) else list(heads)

    def resolve(folder: str | Path, m: int) -> Path | None:
        return shipped_heads(model, m) if str(folder) == "shipped" else resolve_heads(folder)

    if mem_size is None:  # no M asked for: the one folder given (the shipped heads for the default M)
        if len(folders) != 1:
            raise ConfigError(f"several heads folders {[str(f) for f in folders]}: say which M (mem_size) to use")
        path = resolve(folders[0], LoCoCoConfig.mem_size)
        if path is None:
            raise ConfigError(f"no LoCoCo heads ship with lococo for this model at M = {LoCoCoConfig.mem_size}")
        return path
    found = []
    for folder in folders:
        path = resolve(folder, mem_size)
        if path is None:
            continue
        config, _ = read_heads_config(path)
        if config.mem_size == mem_size:
            return path
        found.append(f"{folder} (mem_size={config.mem_size})")
    raise ConfigError(
        f"no trained heads for mem_size={mem_size} in --heads {' '.join(map(str, folders))}"
        + (f": found {', '.join(found)}" if found else "")
        + f"; pass heads trained with M={mem_size} or drop {mem_size} from --mem-size"
    )


SHIPPED_DIR = Path(__file__).resolve().parent / "pretrained"


def shipped_heads(model: nn.Module, mem_size: int) -> Path | None:
    """Trained heads shipped with lococo for ``model`` at ``mem_size``, if any (else None).

    They are found by architecture fingerprint and memory size, so any copy of the reference model matches.
    """
    if not SHIPPED_DIR.is_dir():
        return None
    fingerprint = attention_layout(model).fingerprint()
    for folder in sorted(SHIPPED_DIR.iterdir()):
        if not (folder / CONFIG_NAME).is_file():
            continue
        config, meta = read_heads_config(folder)
        if config.mem_size == mem_size and meta.get("fingerprint") == fingerprint:
            return folder
    return None
