"""Training LoCoCo heads on a frozen model: a loop you can read top to bottom.

Each training sequence (``n_segments x segment_size`` tokens) is read segment by segment through one
compressing cache. The loss is next-token cross-entropy inside each segment. Gradient reaches the heads
(and lambda) through the current segment's attention on the memory they just built; the memory is
detached every ``tbptt`` segments (1 = the authors' one-segment truncation), with one backward per
window. Training memory is therefore O(M + B) whatever the sequence length.

Multi-process runs go through accelerate (``accelerate launch -m lococo train ...``): the model is wrapped
by ``accelerator.prepare`` (DDP, FSDP or DeepSpeed as configured), gradients are synchronised only on
the last backward of an optimiser step, and micro-batches are dealt out round-robin so that N processes
with accumulation A see exactly the data of 1 process with accumulation N x A.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from ..attention import enable_scoring
from ..cache import CompressedCache
from ..compressor.config import LoCoCoConfig
from ..compressor.heads import attach, get_heads, has_heads
from ..compressor.heads_io import load_heads, save_heads
from ..errors import ConfigError
from ..evaluation.perplexity import perplexity
from ..extension import add_lora, apply_rope_scaling, embeddings_and_norms, save_extended
from ..generation import iter_segments, make_cache
from ..models_support import reindex_refusal
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .layerwise import LayerwiseReader

if TYPE_CHECKING:
    from peft import LoraConfig


def trainable_parameters(model, cfg: TrainConfig) -> list[dict]:
    """Freeze the model, then unfreeze the heads (and, optionally, embeddings and norms)."""
    for p in model.parameters():
        p.requires_grad_(False)
    heads = list(get_heads(model).parameters())
    groups = [{"params": heads, "lr": cfg.lr_heads, "name": "heads"}]
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    if lora:
        groups.append({"params": lora, "lr": cfg.lr_lora, "name": "lora"})
    if cfg.embeddings_norms_trainable:
        extra = list(embeddings_and_norms(model).values())
        groups.append({"params": extra, "lr": cfg.lr_embeddings_norms, "name": "embeddings_norms"})
    for group in groups:
        for p in group["params"]:
            p.requires_grad_(True)
    return groups


def prepare_model(model, cfg: TrainConfig) -> LoraConfig | None:
    """Set ``model`` up for training as ``cfg`` says: RoPE scaling (``extend_to``), heads (loaded from
    ``init_heads``, the ones attached, or fresh), LoRA (``extend_to``), attention scores, eval mode.

    Returns the LoRA config when extending the context, else None. Parameters stay as they were; see
    :func:`trainable_parameters`.
    """
    if cfg.extend_to:
        apply_rope_scaling(model, cfg.extend_to, cfg.rope_scaling)
    if cfg.init_heads:
        load_heads(model, cfg.init_heads, replace=True)
    elif not has_heads(model):
        attach(model, LoCoCoConfig(**cfg.lococo_config()))
    heads = get_heads(model).config
    if heads.head_dtype == "bfloat16_if_native":
        get_heads(model).float()  # an inference setting (the shipped heads'): the optimiser updates fp32 weights
    if cfg.positions == "reindexed" and (reason := reindex_refusal(model)) is not None:
        raise ConfigError(f"positions 'reindexed' cannot train on {type(model).__name__}: {reason}; use absolute")
    heads.positions = cfg.positions  # the scheme these heads are trained with: their caches' default
    if cfg.score_mode is not None:
        heads.score_mode = cfg.score_mode  # and the scores they learn to read
    if (heads.mem_size, heads.buffer) != (cfg.mem_size, cfg.buffer):
        raise ConfigError(
            f"the heads to train have mem_size={heads.mem_size}, buffer={heads.buffer} but the training config says "
            f"mem_size={cfg.mem_size}, buffer={cfg.buffer}: make them agree (the heads own these settings)"
        )
    lora_config = add_lora(model, cfg.lora_r, cfg.lora_alpha) if cfg.extend_to else None
    enable_scoring(model)
    model.eval()  # the frozen model: no dropout; the heads have none
    return lora_config


def learning_chunks(sizes: list[int], mem_size: int, buffer: int) -> list[bool]:
    """Which chunks (of ``sizes`` tokens, read in order) run a compression first (only those train the heads)."""
    stored, flags = 0, []
    for size in sizes:
        compresses = stored > mem_size + buffer
        flags.append(compresses)
        stored = (mem_size if compresses else stored) + size
    return flags


def learning_segments(n_segments: int, segment_size: int, mem_size: int, buffer: int) -> list[bool]:
    """Which of ``n_segments`` full segments run a compression (:func:`learning_chunks`)."""
    return learning_chunks([segment_size] * n_segments, mem_size, buffer)


def chunk_plan(cfg: TrainConfig) -> list[tuple[int, int]]:
    """How a training sequence is read: segments of ``segment_size`` from the start, then its last
    ``decode_tokens`` tokens one at a time (the decoding path: buffer-sized compressions scored by one query)."""
    n = cfg.n_segments * cfg.segment_size
    prefix = n - cfg.decode_tokens
    bounds = [(s, min(s + cfg.segment_size, prefix)) for s in range(0, prefix, cfg.segment_size)]
    return bounds + [(p, p + 1) for p in range(prefix, n)]


def learning_units(cfg: TrainConfig, mem_size: int, buffer: int) -> tuple[list[bool], bool]:
    """(learning flags of the segments, whether the decoded tail learns). The tail is one unit: one loss
    (the mean over its tokens) and one backward; it learns if any compression came before or inside it."""
    plan = chunk_plan(cfg)
    flags = learning_chunks([b - a for a, b in plan], mem_size, buffer)
    n_seg = len(plan) - cfg.decode_tokens
    return flags[:n_seg], cfg.decode_tokens > 0 and any(flags)


def loss_scale(cfg: TrainConfig) -> float:
    """Factor on each unit's loss so that one optimiser step's gradient is that of the mean loss.

    A unit's loss (a segment, or the decoded tail) is already the mean over its tokens and the rows of its
    batch, so only learning units and accumulation steps are divided out: the gradient does not depend on
    how rows are split into batches.
    """
    seg_flags, tail = learning_units(cfg, cfg.mem_size, cfg.buffer)
    return 1.0 / (max(sum(seg_flags) + tail, 1) * cfg.grad_accum)


def _new_cache(model, policy: str = "lococo") -> CompressedCache:
    """A cache of the heads attached to ``model`` (they own M and the buffer), or the teacher's full cache."""
    return make_cache(model, policy, prefill_chunk_size=None)


def _read(model, ids: torch.Tensor, cache: CompressedCache, plan: list[tuple[int, int]], grad: list[bool]):
    """Feed ``ids`` through ``cache`` chunk by chunk as ``plan`` says; yields ``(start, stop, logits)``."""
    for (start, stop), keep_graph in zip(plan, grad, strict=True):
        (_, _, out), = iter_segments(model, ids[:, start:stop], cache, stop - start, grad=keep_graph)
        yield start, stop, out.logits


def _token_losses(logits: torch.Tensor, ids: torch.Tensor, start: int, stop: int,
                  teacher: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Mean next-token loss (and KL from the teacher's distribution) of the chunk ``[start, stop)``.

    Every position with a next token is scored, including the chunk's last one (its target opens the next
    chunk), so a one-token chunk of the decoded tail has a loss too.
    """
    last = min(stop, ids.shape[1] - 1)
    n_pos = last - start
    if n_pos <= 0:
        return logits.new_zeros(()), None, 0
    student = logits[:, :n_pos].float().log_softmax(-1)
    target = ids[:, start + 1 : last + 1].to(logits.device)
    lm = F.nll_loss(student.flatten(0, 1), target.flatten())
    kl = None
    if teacher is not None:
        ref = teacher[:, :n_pos].float().log_softmax(-1)
        kl = F.kl_div(student.flatten(0, 1), ref.flatten(0, 1), log_target=True, reduction="batchmean")
    return lm, kl, n_pos * ids.shape[0]


class _ModelReader:
    """The ``lm`` / ``kl`` objectives: the model reads the chunks through the heads' cache (a teacher with a
    full cache in lockstep for ``kl``). ``chunks`` yields ``(objective, {metric: value}, tokens)`` per chunk;
    ``detach_`` is the truncated back-propagation boundary (as :class:`~lococo.training.layerwise.LayerwiseReader`).
    """

    def __init__(self, model, unwrapped, ids: torch.Tensor, objective: str) -> None:
        self.model, self.unwrapped, self.ids, self.objective = model, unwrapped, ids, objective
        self.cache = _new_cache(unwrapped)

    def chunks(self, plan: list[tuple[int, int]], grad: list[bool]):
        use_kl = self.objective != "lm"
        teacher = None
        if use_kl:
            teacher = _read(self.unwrapped, self.ids, _new_cache(self.unwrapped, "full"), plan, [False] * len(plan))
        for start, stop, logits in _read(self.model, self.ids, self.cache, plan, grad):
            ref = next(teacher)[2] if teacher is not None else None
            lm, kl, n = _token_losses(logits, self.ids, start, stop, ref)
            logged = {"lm": lm.item()} if kl is None else {"lm": lm.item(), "kl": kl.item()}
            yield {"lm": lm, "kl": kl, "lm+kl": lm + kl if kl is not None else None}[self.objective], logged, n

    def detach_(self) -> None:
        self.cache.detach_()


def sequence_loss(model, unwrapped, ids: torch.Tensor, cfg: TrainConfig, accelerator: Accelerator, scale: float,
                  sync_at_end: bool) -> dict[str, float]:
    """Forward/backward one batch of sequences chunk by chunk (:func:`chunk_plan`).

    Returns the token-summed losses (``lm``, and ``kl`` or ``layer`` by ``cfg.objective``), their token count
    ``tokens``, and for the decoded tail ``decode_<loss>`` and ``decode_tokens``. With "kl" or "lm+kl" a
    teacher (the same frozen model with a full cache, no gradient) reads the same chunks in lockstep; with
    "layer" the model reads once with a full cache and the heads learn layer by layer
    (:mod:`lococo.training.layerwise`). Gradients are synchronised across processes only on the last
    backward when ``sync_at_end``.
    """
    heads = get_heads(unwrapped).config
    plan = chunk_plan(cfg)
    seg_flags, tail_learns = learning_units(cfg, heads.mem_size, heads.buffer)
    n_seg = len(seg_flags)
    grad = seg_flags + [tail_learns] * cfg.decode_tokens
    last_learning = len(plan) - 1 if tail_learns else max((t for t, f in enumerate(seg_flags) if f), default=-1)
    reader = LayerwiseReader(unwrapped, ids) if cfg.objective == "layer" else _ModelReader(model, unwrapped, ids,
                                                                                             cfg.objective)
    sums: dict[str, float] = {"tokens": 0, "decode_tokens": 0}
    window: list[torch.Tensor] = []
    tail: list[tuple[torch.Tensor, int]] = []
    for t, (objective, logged, n) in enumerate(reader.chunks(plan, grad)):
        decoded = t >= n_seg
        for name, value in logged.items():
            for key in (name, f"decode_{name}") if decoded else (name,):
                sums[key] = sums.get(key, 0.0) + value * n
        sums["tokens"] += n
        sums["decode_tokens"] += n if decoded else 0
        if decoded:
            if tail_learns and n:
                tail.append((objective, n))
            if t == len(plan) - 1 and tail:
                total = sum(n for _, n in tail)
                window.append(sum(loss * (n / total) for loss, n in tail))  # the tail's mean: one unit
        elif grad[t]:
            window.append(objective)
        if window and (len(window) == cfg.tbptt or t == last_learning):
            final = sync_at_end and t == last_learning
            with nullcontext() if final else accelerator.no_sync(model):
                accelerator.backward(torch.stack(window).sum() * scale)
            window = []
        if not window and t < n_seg:
            reader.detach_()  # truncated back-propagation boundary (the decoded tail is one window)
    return sums


def heldout_perplexity(model, rows: torch.Tensor, cfg: TrainConfig) -> float:
    """Perplexity of held-out rows read through the trained cache: exactly what ``lococo eval ppl`` computes
    (:func:`lococo.evaluation.perplexity.perplexity`, every position 1..N-1 of each row scored)."""
    sequences = [row[None] for row in rows]
    return perplexity(model, sequences, lambda: _new_cache(model), cfg.segment_size, progress=False)["ppl"]


def train_heads(model, rows: torch.Tensor, cfg: TrainConfig, *, eval_rows: torch.Tensor | None = None,
                accelerator: Accelerator | None = None) -> Path:
    """Train LoCoCo heads of ``model`` on packed ``rows [N, n_segments * segment_size]``.

    Writes checkpoints under ``cfg.output_dir/checkpoints`` (atomically, last ``keep_last`` kept), metrics
    as JSONL, and the final heads to ``cfg.output_dir/heads`` (``cfg.output_dir/extended`` with
    ``extend_to``: heads + LoRA adapter + RoPE scaling). Returns that folder.
    """
    cfg.validate(rows)
    out_dir = Path(cfg.output_dir)
    accelerator = accelerator or Accelerator(cpu=cfg.device == "cpu", log_with=cfg.report_to, project_dir=out_dir)
    if cfg.report_to:
        accelerator.init_trackers("lococo", config=json.loads(cfg.to_json()))
    torch.manual_seed(cfg.seed)
    lora_config = prepare_model(model, cfg)
    groups = trainable_parameters(model, cfg)
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, betas=(0.9, 0.999))
    scheduler = get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps, cfg.max_steps)  # as the authors
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)

    start_step = 0
    if cfg.resume and (ckpt := latest_checkpoint(out_dir)) is not None:
        start_step = load_checkpoint(ckpt, unwrapped, optimizer, scheduler)
        accelerator.print(f"resumed from {ckpt} at step {start_step}")
        log = out_dir / "metrics.jsonl"
        if accelerator.is_main_process and log.exists():  # drop steps logged after the checkpoint
            kept = [line for line in log.read_text().splitlines() if json.loads(line)["step"] <= start_step]
            log.write_text("".join(line + "\n" for line in kept))

    world, rank = accelerator.num_processes, accelerator.process_index
    per_step = cfg.grad_accum * world * cfg.batch_size
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(cfg.seed))
    scale = loss_scale(cfg)
    main = "layer" if cfg.objective == "layer" else "lm"  # the logged "loss": the objective's own loss for layer
    if cfg.objective == "layer" and world > 1:
        raise ConfigError("objective 'layer' trains the heads outside the model's forward, which DDP does not "
                          "synchronise: run it in one process, or use lm / kl with accelerate launch")
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not cfg.resume:
            (out_dir / "metrics.jsonl").unlink(missing_ok=True)
    metrics = (out_dir / "metrics.jsonl").open("a") if accelerator.is_main_process else None
    bar = tqdm(range(start_step, cfg.max_steps), initial=start_step, total=cfg.max_steps, desc="train",
               disable=not accelerator.is_main_process)
    for step in bar:
        t0 = time.perf_counter()
        acc: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            first = step * per_step + (micro * world + rank) * cfg.batch_size
            idx = [int(order[(first + j) % len(rows)]) for j in range(cfg.batch_size)]
            batch = rows[idx].to(accelerator.device)
            sums = sequence_loss(model, unwrapped, batch, cfg, accelerator, scale,
                                 sync_at_end=micro == cfg.grad_accum - 1)
            acc = {k: acc.get(k, 0.0) + v for k, v in sums.items()}
        if cfg.clip_grad:
            accelerator.clip_grad_norm_([p for g in groups for p in g["params"]], cfg.clip_grad)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        keys = sorted(acc)
        reduced = accelerator.reduce(torch.tensor([acc[k] for k in keys], dtype=torch.float64,
                                                  device=accelerator.device), "sum")
        totals = dict(zip(keys, reduced.tolist(), strict=True))
        tokens = max(totals["tokens"], 1.0)
        record = {
            "step": step + 1,
            "loss": totals[main] / tokens,
            "tokens_seen": (step + 1) * per_step * cfg.n_segments * cfg.segment_size,
            "tokens_per_s": totals["tokens"] / (time.perf_counter() - t0),
            "lr": scheduler.get_last_lr()[0],
            "lambda_mean": float(torch.stack([h.lam.detach() for h in get_heads(unwrapped).heads.values()]).mean()),
        }
        for name in ("kl", "layer"):
            if name in totals:
                record[name] = totals[name] / tokens
        if totals["decode_tokens"]:
            record["decode_loss"] = totals[f"decode_{main}"] / totals["decode_tokens"]
        if eval_rows is not None and cfg.eval_every and (step + 1) % cfg.eval_every == 0:
            record["heldout_ppl"] = heldout_perplexity(unwrapped, eval_rows.to(accelerator.device), cfg)
        bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
        if cfg.report_to:
            accelerator.log(record, step=step + 1)
        if metrics:
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and accelerator.is_main_process:
            save_checkpoint(out_dir, step + 1, unwrapped, optimizer, scheduler, keep_last=cfg.keep_last)
        accelerator.wait_for_everyone()
    final = out_dir / ("extended" if lora_config else "heads")
    if accelerator.is_main_process:
        dtype = getattr(torch, cfg.save_dtype) if cfg.save_dtype else None
        if lora_config:
            save_extended(unwrapped, final, lora_config=lora_config, dtype=dtype)
        else:
            save_heads(unwrapped, final, dtype=dtype)
        (out_dir / "train_config.json").write_text(cfg.to_json())
    accelerator.wait_for_everyone()
    if cfg.report_to:
        accelerator.end_training()
    if metrics:
        metrics.close()
    return final
