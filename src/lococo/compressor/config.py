"""`LoCoCoConfig`: every knob of the method, validated, JSON round-trippable.

Defaults follow the paper and the authors' code (see docs/method.md): M = 128 slots, B = 512-token segments,
half of the slots kept as exact heavy hitters, a 21-wide convolution, lambda initialised at 0.5.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

SCORE_MODES = ("last", "accumulated", "query", "recent", "hybrid")
ACTIVATIONS = ("relu", "gelu", "silu", "identity")
HEAD_DTYPES = ("float32", "bfloat16", "float16", "auto", "bfloat16_if_native")
POSITION_SCHEMES = ("absolute", "reindexed")
LEGACY_FIELDS = ("clamp_lambda", "extra")
"""Fields of lococo 0.1 configs that are read and ignored (lambda is now in [0, 1] by construction; ``extra``
was never read)."""


@dataclass
class LoCoCoConfig:
    """Configuration of the LoCoCo compressor heads and of the compressing cache.

    Attributes:
        mem_size: M, memory slots per layer and KV head after a compression.
        segment_size: B, tokens per segment in chunked prefill and training.
        hh_keep_rate: rho, share of M kept as exact heavy-hitter tokens (0 = every slot is a learned mixture).
        kernel_size: width of the 1-D convolution ("same" padding); must be odd.
        n_conv_layers: number of convolution layers (activation after each).
        expand: hidden width multiplier of the intermediate conv layers (hidden = C * expand).
        bottleneck: channels of a bias-free 1x1 projection of ``[K; V]`` (``2 * head_dim`` channels) before the
            convolution, 0 for none (the paper). The k-wide conv then reads ``bottleneck`` channels instead of
            ``2 * head_dim``: multiply-adds per token ``2d*r + r*C*k`` instead of ``2d*C*k``.
        separable: each conv layer as a depthwise k-wide conv (one filter per input channel) followed by a 1x1
            conv: ``c_in*k + c_in*c_out`` multiply-adds per token instead of ``c_in*c_out*k``.
        activation: activation after each conv layer ("relu" as the paper).
        lambda_init: initial value, in [0, 1], of the learnable per-layer blend between conv weights and
            top-k selection. lambda = sigmoid(logit) stays in [0, 1] while training (the paper's scalar was
            unconstrained); 0 or 1 fixes it there.
        buffer: compress only once the stored length exceeds ``mem_size + buffer``.
        local_window: newest tokens always kept exact (part of the heavy hitters).
        score_mode: which attention ranks the slots: "last" (column sums of the latest forward's queries, the
            paper's default), "accumulated" (H2O-style sums over forwards), "query" (the latest query's
            attention summed over the layer's heads: TOVA's rule, defined the same way in prefill and in
            decoding, and one query's scores instead of a segment's), or "recent" (the column sums of every
            query since the latest compression: "last" in a segmented prefill, and in decoding the ``buffer``
            queries since the previous compression instead of one query's), or "hybrid" ("last" in prefill; when
            the scores come from one query, in decoding, summed over the layer's heads as TOVA ranks). With
            "query" and ``lambda_init`` 0 an untrained LoCoCo keeps exactly what TOVA keeps.
        head_dtype: dtype of the head parameters ("auto" = the model's dtype; "bfloat16_if_native" = bfloat16
            on a device with native bf16 kernels (a CUDA GPU that supports it, a CPU with AVX512-BF16/AMX) and
            float32 elsewhere, where emulated bf16 convolutions are 21-85x slower: the shipped heads' setting,
            reports/precision/bf16_heads.md); training updates them in float32.
        positions: the key positions the heads are trained with, and so the default of their caches
            (``make_cache(reindex_positions=None)``): "absolute" (tokens seen) or "reindexed" (counted inside
            the cache after every compression, :mod:`lococo.positions`). Heads trained one way read worse the
            other way (docs/policies.md).
        mix_in_decoding: whether decoding-time compressions (every ``buffer + 1`` tokens, scored by one query)
            mix the fused slots as prefill compressions do (True), or keep the top-C of the rest exactly
            (False: selection only, no conv), so that fused slots are not re-mixed 30 times as often per
            token in decoding as in prefill.
    """

    mem_size: int = 128
    segment_size: int = 512
    hh_keep_rate: float = 0.5
    kernel_size: int = 21
    n_conv_layers: int = 1
    expand: int = 1
    bottleneck: int = 0
    separable: bool = False
    activation: str = "relu"
    lambda_init: float = 0.5
    buffer: int = 16
    local_window: int = 0
    score_mode: str = "last"
    head_dtype: str = "float32"
    positions: str = "absolute"
    mix_in_decoding: bool = True

    def __post_init__(self) -> None:
        self.validate()

    # ----------------------------------------------------------------------------------------------
    @property
    def n_fused(self) -> int:
        """C: slots produced by the convolution (the rest are exact heavy hitters)."""
        return self.mem_size - self.n_heavy

    @property
    def n_heavy(self) -> int:
        """H = round(rho * M): exact heavy-hitter slots (including the local window)."""
        return int(round(self.hh_keep_rate * self.mem_size))

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the bad field and what to use instead."""

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(f"invalid LoCoCoConfig: {msg}")

        for name in ("mem_size", "segment_size", "kernel_size", "n_conv_layers", "expand", "bottleneck", "buffer",
                     "local_window"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool), f"{name} must be an integer, got {value!r}")
        need(self.mem_size >= 1, f"mem_size must be >= 1, got {self.mem_size}")
        need(self.segment_size >= 1, f"segment_size must be >= 1, got {self.segment_size}")
        need(0.0 <= float(self.hh_keep_rate) <= 1.0, f"hh_keep_rate must be in [0, 1], got {self.hh_keep_rate}")
        need(self.kernel_size >= 1 and self.kernel_size % 2 == 1, f"kernel_size must be odd and >= 1, got {self.kernel_size}")
        need(self.n_conv_layers >= 1, f"n_conv_layers must be >= 1, got {self.n_conv_layers}")
        need(self.expand >= 1, f"expand must be >= 1, got {self.expand}")
        need(self.buffer >= 0, f"buffer must be >= 0, got {self.buffer}")
        need(self.bottleneck >= 0, f"bottleneck must be >= 0 (0 = no projection), got {self.bottleneck}")
        need(isinstance(self.separable, bool), f"separable must be true or false, got {self.separable!r}")
        need(self.local_window >= 0, f"local_window must be >= 0, got {self.local_window}")
        need(
            self.local_window <= self.n_heavy,
            f"local_window ({self.local_window}) must fit in the heavy-hitter slots round(hh_keep_rate*mem_size)"
            f" = {self.n_heavy}; raise hh_keep_rate or lower local_window",
        )
        need(self.activation in ACTIVATIONS, f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        need(self.score_mode in SCORE_MODES, f"score_mode must be one of {SCORE_MODES}, got {self.score_mode!r}")
        need(self.head_dtype in HEAD_DTYPES, f"head_dtype must be one of {HEAD_DTYPES}, got {self.head_dtype!r}")
        need(self.positions in POSITION_SCHEMES, f"positions must be one of {POSITION_SCHEMES}, got {self.positions!r}")
        need(isinstance(self.mix_in_decoding, bool), f"mix_in_decoding must be true or false, got {self.mix_in_decoding!r}")
        need(
            isinstance(self.lambda_init, (int, float)) and not isinstance(self.lambda_init, bool)
            and 0.0 <= float(self.lambda_init) <= 1.0,
            f"lambda_init must be a number in [0, 1], got {self.lambda_init!r}",
        )

    # ----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoCoCoConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k not in LEGACY_FIELDS}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown LoCoCoConfig field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LoCoCoConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"LoCoCoConfig JSON is not valid: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError("LoCoCoConfig JSON must be an object")
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> LoCoCoConfig:
        return cls.from_json(Path(path).read_text())
