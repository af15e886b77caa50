"""`TrainConfig`: the training recipe (defaults: the authors' optimiser, docs/method.md), validated."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..compressor.config import POSITION_SCHEMES, SCORE_MODES
from ..errors import ConfigError

if TYPE_CHECKING:
    import torch


OBJECTIVES = ("lm", "kl", "lm+kl", "layer")
"""Training signals: next-token loss; KL from the same frozen model reading with a full cache; their sum;
per-layer reconstruction of attention outputs (no backward pass through the model)."""


@dataclass
class TrainConfig:
    """Everything ``lococo train`` needs; JSON round-trippable (saved beside the trained heads).

    ``objective``: the training signal. "lm" is next-token loss; "kl" is the KL divergence from the same
    frozen model reading the same chunks with a full cache (a teacher run in lockstep without gradient: it
    costs one more forward per chunk, and its cache grows with the training sequence); "lm+kl" is their sum;
    "layer" reconstructs each compressed layer's attention output from its compressed memory, against the full
    cache's (one forward per chunk without gradient, no backward through the model; the logged ``loss`` is then
    that relative error; :mod:`lococo.training.layerwise`).
    ``bottleneck``, ``separable``: the cheaper conv architectures of fresh heads (as ``LoCoCoConfig``).
    ``decode_tokens``: the last tokens of each training sequence are read one at a time, through the
    decoding path (buffer-sized compressions scored by one query), as ``generate`` reads them; their mean
    loss is one more learning unit.
    ``positions``: the key positions the heads train with ("absolute" or "reindexed", as
    ``LoCoCoConfig.positions``); written into the heads' config, so their caches take the same scheme.
    ``score_mode``: which attention ranks the slots while training, and so at inference (as
    ``LoCoCoConfig.score_mode``; "query" is TOVA's rule); written into the heads' config like ``positions``.
    None keeps the trained heads' own (``LoCoCoConfig``'s default for fresh heads).
    """

    output_dir: str = "runs/heads"
    mem_size: int = 128
    segment_size: int = 512
    n_segments: int = 4
    hh_keep_rate: float = 0.5
    kernel_size: int = 21
    bottleneck: int = 0
    separable: bool = False
    buffer: int = 16
    lambda_init: float = 0.5
    positions: str = "absolute"
    score_mode: str | None = None
    tbptt: int = 1
    objective: str = "lm"
    decode_tokens: int = 0
    batch_size: int = 1
    grad_accum: int = 8
    max_steps: int = 100
    lr_heads: float = 5e-2
    lr_embeddings_norms: float = 2.5e-4
    train_embeddings_norms: bool | None = None  # None: only when extending the context (LongLoRA)
    warmup_steps: int = 0
    weight_decay: float = 0.0
    clip_grad: float = 1.0
    seed: int = 0
    save_every: int = 10
    keep_last: int = 3
    eval_every: int = 0
    resume: bool = False
    init_heads: str | None = None
    save_dtype: str | None = "bfloat16"
    device: str = "cpu"
    extend_to: int | None = None
    rope_scaling: str = "linear"
    lora_r: int = 8
    lora_alpha: int = 16
    lr_lora: float = 5e-5
    report_to: str | None = None

    @property
    def embeddings_norms_trainable(self) -> bool:
        if self.train_embeddings_norms is None:
            return self.extend_to is not None
        return self.train_embeddings_norms

    def lococo_config(self) -> dict:
        """The LoCoCoConfig fields this recipe sets."""
        fields = dict(mem_size=self.mem_size, segment_size=self.segment_size, hh_keep_rate=self.hh_keep_rate,
                      kernel_size=self.kernel_size, bottleneck=self.bottleneck, separable=self.separable,
                      buffer=self.buffer, lambda_init=self.lambda_init, positions=self.positions)
        return fields if self.score_mode is None else {**fields, "score_mode": self.score_mode}

    def validate(self, rows: torch.Tensor | None = None) -> None:
        positive = ("mem_size", "segment_size", "n_segments", "tbptt", "batch_size", "grad_accum", "max_steps",
                    "keep_last")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.extend_to is not None and self.extend_to < 1:
            raise ConfigError(f"extend_to must be a positive number of tokens, got {self.extend_to}")
        if self.positions not in POSITION_SCHEMES:
            raise ConfigError(f"positions must be one of {', '.join(POSITION_SCHEMES)}, got {self.positions!r}")
        if self.score_mode is not None and self.score_mode not in SCORE_MODES:
            raise ConfigError(f"score_mode must be one of {', '.join(SCORE_MODES)}, got {self.score_mode!r}")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.objective != "lm" and self.extend_to is not None:
            raise ConfigError(f"objective {self.objective} needs a teacher that reads the text natively; with "
                              "--extend-to use lm")
        if not 0 <= self.decode_tokens < self.n_segments * self.segment_size:
            raise ConfigError(f"decode_tokens must be in [0, n_segments*segment_size), got {self.decode_tokens}")
        if self.lr_heads <= 0:
            raise ConfigError(f"lr_heads must be > 0, got {self.lr_heads}")
        if self.warmup_steps < 0 or self.warmup_steps >= self.max_steps:
            raise ConfigError(f"warmup_steps must be in [0, max_steps), got {self.warmup_steps}")
        if self.report_to not in (None, "tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "all"):
            raise ConfigError(f"report_to must be an accelerate tracker (tensorboard, wandb, ...), got {self.report_to!r}")
        if self.save_dtype not in (None, "float32", "bfloat16", "float16"):
            raise ConfigError(f"save_dtype must be float32, bfloat16 or float16, got {self.save_dtype!r}")
        if rows is not None:
            width = self.n_segments * self.segment_size
            if rows.dim() != 2 or rows.shape[1] != width:
                raise ConfigError(f"training rows must be [N, n_segments*segment_size = {width}], got {tuple(rows.shape)}")
            if len(rows) < self.batch_size:
                raise ConfigError(f"only {len(rows)} training sequences for batch_size {self.batch_size}; add data")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown TrainConfig field(s): {', '.join(unknown)}")
        return cls(**data)
