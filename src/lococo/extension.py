"""Context extension at constant memory: RoPE scaling + LoRA (peft) + LoCoCo heads, saved as one unit.

The paper's "post-training tuning" (docs/method.md): linear positional interpolation with factor
target / native length (through the model config's RoPE parameters, the transformers way; "yarn" and
"dynamic" where transformers supports them), LoRA r=8, alpha=16 on q, k, v, o (peft), embeddings and norms
trainable as in LongLoRA, plus the heads. `save_extended` / `load_extended` keep all of it together;
`merge_lora` folds the adapter into the base weights for export.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn

from .compressor.heads_io import load_heads, save_heads
from .errors import ConfigError, IncompatibleModelError

EXTENSION_NAME = "lococo_extension.json"
ADAPTER_NAME = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # the key layout of peft's PeftModel.save_pretrained
EXTRA_NAME = "embeddings_norms.safetensors"
ROPE_TYPES = ("linear", "yarn", "dynamic")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def native_length(model: nn.Module) -> int:
    """The context length the model was trained for (before any extension applied by lococo)."""
    config = model.config
    return int(getattr(config, "lococo_native_length", None) or config.max_position_embeddings)


def apply_rope_scaling(model: nn.Module, target_length: int, rope_type: str = "linear") -> float:
    """Scale the model's RoPE for ``target_length`` tokens; returns the factor (target / native length)."""
    if rope_type not in ROPE_TYPES:
        raise ConfigError(f"rope scaling must be one of {ROPE_TYPES}, got {rope_type!r}")
    config = model.config
    native = native_length(model)
    if target_length <= native:
        raise ConfigError(f"extend_to ({target_length}) must exceed the model's native length ({native})")
    factor = target_length / native
    params = dict(config.rope_parameters)
    params.update(rope_type=rope_type, factor=factor)
    if rope_type != "linear":
        params["original_max_position_embeddings"] = native
    config.rope_parameters = params
    config.lococo_native_length = native
    config.max_position_embeddings = target_length
    base = getattr(model, "model", model)
    rotary = base.rotary_emb
    device = rotary.inv_freq.device
    base.rotary_emb = type(rotary)(config=config).to(device)
    return factor


def add_lora(model: nn.Module, r: int = 8, alpha: int = 16, targets: tuple[str, ...] = LORA_TARGETS) -> LoraConfig:
    """Inject LoRA adapters (peft) into the attention projections, in place; returns their config."""
    config = LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, bias="none")
    inject_adapter_in_model(config, model)
    return config


def _is_embedding_or_norm(module: nn.Module) -> bool:
    if isinstance(module, (nn.Embedding, nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)):
        return True
    return type(module).__name__.endswith(("RMSNorm", "LayerNorm"))  # models' own norm classes


def embeddings_and_norms(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters LongLoRA also trains: token embeddings and every norm, chosen by module type (the
    LoCoCo heads and LoRA adapters excluded)."""
    params = {}
    for name, module in model.named_modules():
        if name.startswith("lococo") or "lora_" in name or not _is_embedding_or_norm(module):
            continue
        for pname, p in module.named_parameters(recurse=False):
            params[f"{name}.{pname}" if name else pname] = p
    return params


def save_extended(model: nn.Module, folder: str | Path, *, lora_config: LoraConfig,
                  dtype: torch.dtype | None = None) -> Path:
    """Save heads + LoRA adapter + RoPE scaling + trained embeddings/norms into one folder."""
    folder = save_heads(model, folder, dtype=dtype)
    # peft's own adapter folder: PeftModel.from_pretrained(base_model, folder) loads it as any adapter
    adapter = {PEFT_PREFIX + k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    save_file(adapter, str(folder / ADAPTER_NAME), metadata={"format": "pt"})
    lora_config.base_model_name_or_path = getattr(model.config, "_name_or_path", None)
    lora_config.save_pretrained(str(folder))
    extra = {k: v.detach().cpu().contiguous() for k, v in embeddings_and_norms(model).items()}
    save_file(extra, str(folder / EXTRA_NAME))
    meta = {
        "rope_parameters": model.config.rope_parameters,
        "native_length": native_length(model),
        "target_length": model.config.max_position_embeddings,
        "lora": {"r": lora_config.r, "lora_alpha": lora_config.lora_alpha,
                 "target_modules": sorted(lora_config.target_modules)},
    }
    (folder / EXTENSION_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return folder


def load_extended(model: nn.Module, folder: str | Path) -> LoraConfig:
    """Apply a saved extension to ``model`` (a fresh copy of the base model); returns the LoRA config."""
    folder = Path(folder)
    path = folder / EXTENSION_NAME
    if not path.is_file():
        raise IncompatibleModelError(f"{folder} holds no context extension ({EXTENSION_NAME} is missing)")
    meta = json.loads(path.read_text())
    if native_length(model) != meta["native_length"]:
        raise IncompatibleModelError(
            f"the extension in {folder} was made for a model of native length {meta['native_length']}, "
            f"this model has {native_length(model)}; load it onto the model it was trained from"
        )
    load_heads(model, folder)  # checks the architecture fingerprint
    rope = meta["rope_parameters"]
    apply_rope_scaling(model, meta["target_length"], rope["rope_type"])
    lora = meta["lora"]
    config = add_lora(model, lora["r"], lora["lora_alpha"], tuple(lora["target_modules"]))
    adapter = load_file(str(folder / ADAPTER_NAME))
    set_peft_model_state_dict(model, {k.removeprefix(PEFT_PREFIX): v for k, v in adapter.items()})
    extra = load_file(str(folder / EXTRA_NAME))
    params = embeddings_and_norms(model)
    with torch.no_grad():
        for name, value in extra.items():
            params[name].copy_(value)
    return config


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA adapter into its base weight and put the plain layer back; returns how many."""
    from peft.tuners.lora import LoraLayer

    merged = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.get_base_layer())
            merged += 1
    return merged
