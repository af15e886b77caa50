"""Training checkpoints: safetensors + JSON only (no pickle), written atomically, last K kept.

A checkpoint folder ``checkpoints/step_000010`` holds the heads (``save_heads``), the optimiser state
(``optimizer.safetensors`` + param groups in ``trainer_state.json``), the scheduler state and the step.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..compressor.heads import get_heads
from ..compressor.heads_io import WEIGHTS_NAME, save_heads
from ..errors import LococoError

STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.safetensors"
TRAINABLE_NAME = "trainable.safetensors"


def _other_trainables(model) -> dict[str, torch.Tensor]:
    """Trainable parameters outside the heads (LoRA, embeddings, norms), by name."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("lococo.")}


def _checkpoints(out_dir: Path) -> list[Path]:
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith("step_") and (p / STATE_NAME).is_file())


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = _checkpoints(out_dir)
    return found[-1] if found else None


def _optimizer_tensors(optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    state = optimizer.state_dict()
    tensors = {}
    for idx, slots in state["state"].items():
        for name, value in slots.items():
            tensors[f"state.{idx}.{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return tensors, state["param_groups"]


def save_checkpoint(out_dir: Path, step: int, model, optimizer, scheduler, keep_last: int = 3) -> Path:
    """Write ``checkpoints/step_<step>`` atomically and delete all but the ``keep_last`` newest."""
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp_step_", dir=root))
    try:
        save_heads(model, tmp / "heads")  # full precision: resume must be exact
        save_file({n: p.detach().cpu().contiguous() for n, p in _other_trainables(model).items()},
                  str(tmp / TRAINABLE_NAME))
        tensors, groups = _optimizer_tensors(optimizer)
        tensors["rng.torch"] = torch.get_rng_state()
        save_file(tensors, str(tmp / OPTIMIZER_NAME))
        sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
        (tmp / STATE_NAME).write_text(json.dumps({"step": step, "param_groups": groups, "scheduler": sched}, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in _checkpoints(out_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(folder: Path, model, optimizer, scheduler) -> int:
    """Restore heads, optimiser, scheduler and RNG from ``folder``; returns the step to continue from."""
    folder = Path(folder)
    meta = json.loads((folder / STATE_NAME).read_text())
    heads = get_heads(model)
    weights = load_file(str(folder / "heads" / WEIGHTS_NAME))
    heads.load_state_dict(weights)
    others = _other_trainables(model)
    path = folder / TRAINABLE_NAME
    if others and not path.is_file():
        raise LococoError(f"{folder} holds no {TRAINABLE_NAME}, but this run trains {len(others)} non-head tensors")
    with torch.no_grad():
        for name, value in (load_file(str(path)) if path.is_file() else {}).items():
            others[name].copy_(value)
    tensors = load_file(str(folder / OPTIMIZER_NAME))
    torch.set_rng_state(tensors.pop("rng.torch"))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    groups = meta["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    scheduler.load_state_dict({**meta["scheduler"], "lr_lambdas": [None] * len(groups)})
    return int(meta["step"])
