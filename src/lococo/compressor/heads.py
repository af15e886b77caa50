"""The learned part of LoCoCo: one small convolutional compressor head per attention layer.

`attach(model, config)` adds the heads to the model's module tree under the name ``lococo`` (so
``named_parameters()``, optimisers, accelerate and save/load see them as ``lococo.heads.<i>.*``) and leaves
every base parameter untouched; `detach(model)` removes them and gives back the original model.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from ..errors import IncompatibleModelError
from ..models_support import attention_layout, has_native_bf16
from .config import LoCoCoConfig

ATTR = "lococo"

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "identity": nn.Identity}


class ConvCompressorHead(nn.Module):
    """Mixing weights for the fused memory slots of one layer.

    Input: the tokens R that were not kept as heavy hitters, keys and values concatenated on the feature
    axis (``2 * head_dim`` channels). Output: ``A = softmax_positions(act(conv(X)))`` with ``C`` rows,
    shared by all KV heads of the layer (heads are folded into the batch axis). Blended with the one-hot
    top-C selection through the learnable ``lambda``: ``W = (1 - lambda) P + lambda A``.

    ``lambda = sigmoid(lam_logit)`` stays in [0, 1] by construction, so every fused slot is a convex
    combination of stored tokens (the paper's unconstrained scalar let slots grow compression after
    compression; see docs/method.md). ``lambda_init`` 0 or 1 gives an infinite logit: lambda is then
    exactly 0 or 1 and does not train.
    """

    def __init__(self, head_dim: int, config: LoCoCoConfig) -> None:
        super().__init__()
        self.n_fused = config.n_fused
        width_out = max(self.n_fused, 1)
        hidden = width_out * config.expand
        width_in = config.bottleneck or 2 * head_dim
        # a linear map to fewer channels (no bias: masked positions stay zero, as the conv's own padding)
        self.project = nn.Conv1d(2 * head_dim, width_in, 1, bias=False) if config.bottleneck else None
        channels = [width_in] + [hidden] * (config.n_conv_layers - 1) + [width_out]
        self.convs = nn.ModuleList(
            _conv_layer(c_in, c_out, config.kernel_size, config.separable)
            for c_in, c_out in zip(channels[:-1], channels[1:], strict=True)
        )
        for module in self.convs.modules():
            if isinstance(module, nn.Conv1d) and module.bias is not None:
                nn.init.zeros_(module.bias)  # the research code left it uninitialised (NaN)
        self.act = _ACTIVATIONS[config.activation]()
        self.lam_logit = nn.Parameter(torch.logit(torch.tensor(float(config.lambda_init))))
        self._selects: tuple[int, bool] | None = None  # (lam_logit's version, lambda == 0)

    @property
    def lam(self) -> torch.Tensor:
        """lambda in [0, 1] (differentiable through ``lam_logit``)."""
        return torch.sigmoid(self.lam_logit)

    def blend_weight(self) -> torch.Tensor:
        return self.lam

    def selects_only(self) -> bool:
        """True when lambda is exactly 0 (``lam_logit`` = -inf, which no gradient moves): the fused slots are then
        the top-C tokens themselves and the conv need not run. Read from the device only when ``lam_logit``
        has changed since the last call (an optimiser step, a load), so the hot path never waits for it."""
        version = self.lam_logit._version
        if self._selects is None or self._selects[0] != version:
            self._selects = (version, bool(torch.isneginf(self.lam_logit.detach())))
        return self._selects[1]

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        legacy = prefix + "lam"
        if legacy in state_dict and prefix + "lam_logit" not in state_dict:
            state_dict[prefix + "lam_logit"] = legacy_lambda_to_logit(state_dict.pop(legacy))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def mixing_logits(self, keys: torch.Tensor, values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """Conv logits ``[b, h, C, R]`` over the tokens R (``keys``/``values`` ``[b, h, R, d]``).

        Invalid positions (padding) are zeroed before every conv layer, which is exactly what the conv's
        own zero padding does at the sequence edge, so a padded row mixes like the row alone.
        """
        b, h, r, _ = keys.shape
        x = torch.cat([keys, values], dim=-1).reshape(b * h, r, -1).transpose(1, 2)
        x = x.to(self.lam_logit.dtype)  # the heads' dtype
        keep = None if valid is None else valid.reshape(b * h, 1, r).to(x.dtype)
        if self.project is not None:
            x = self.project(x)
        for conv in self.convs:
            if keep is not None:
                x = x * keep
            x = self.act(conv(x))
        return x.reshape(b, h, -1, r)


def _conv_layer(c_in: int, c_out: int, kernel_size: int, separable: bool) -> nn.Module:
    """One k-wide conv layer ("same" padding): full, or depthwise then 1x1 (``LoCoCoConfig.separable``)."""
    pad = kernel_size // 2
    if not separable:
        return nn.Conv1d(c_in, c_out, kernel_size, padding=pad)
    return nn.Sequential(nn.Conv1d(c_in, c_in, kernel_size, padding=pad, groups=c_in, bias=False),
                         nn.Conv1d(c_in, c_out, 1))


LEGACY_LAMBDA_EPS = 1e-4
"""How far from 0 and 1 an unconstrained lambda of an old heads file is put, so that it can still train."""


def legacy_lambda_to_logit(lam: torch.Tensor) -> torch.Tensor:
    """The ``lam_logit`` for the raw ``lam`` of heads saved by lococo 0.1 (lambda unconstrained).

    The value is clamped into ``[eps, 1 - eps]``: at inference this equals clamping lambda to [0, 1] within
    ``eps``, which removes the drift those heads show past 12K tokens (reports/lambda). If a value had to
    move, a warning says so; re-save the heads (``lococo.save_heads``) to store the new form.
    """
    eps = LEGACY_LAMBDA_EPS
    raw = float(lam.float())
    if not 0.0 <= raw <= 1.0:
        warnings.warn(
            "LoCoCo heads saved by lococo 0.1 have a lambda outside [0, 1]; it was clamped into range on load "
            "(lambda is now sigmoid(lam_logit)). Re-save the heads with lococo.save_heads to store the new form.",
            UserWarning, stacklevel=2,
        )
    clamped = min(max(raw, eps), 1.0 - eps)
    return torch.tensor(math.log(clamped / (1.0 - clamped)), dtype=lam.dtype)


class LoCoCoHeads(nn.Module):
    """All heads of a model: one per compressed (global attention) layer, ``head(i)`` for layer index i.

    Sliding-window layers keep their own window and have no head.
    """

    def __init__(self, config: LoCoCoConfig, head_dim: int, compressed_layers: list[int]) -> None:
        super().__init__()
        self.config = config
        self.compressed_layers = list(compressed_layers)
        self.heads = nn.ModuleDict({str(i): ConvCompressorHead(head_dim, config) for i in compressed_layers})

    def head(self, layer_idx: int) -> ConvCompressorHead:
        return self.heads[str(layer_idx)]


def _head_dtype(config: LoCoCoConfig, model: nn.Module, device: torch.device) -> torch.dtype:
    if config.head_dtype == "auto":
        return next(model.parameters()).dtype
    if config.head_dtype == "bfloat16_if_native":
        return torch.bfloat16 if has_native_bf16(device) else torch.float32
    return getattr(torch, config.head_dtype)


def attach(model: nn.Module, config: LoCoCoConfig | None = None) -> LoCoCoHeads:
    """Attach fresh LoCoCo heads to ``model`` (in place) and return them.

    Each layer's head is placed on that layer's device, so models split with ``device_map="auto"`` work.
    Raises :class:`IncompatibleModelError` for unsupported architectures and if heads are already attached.
    """
    config = config or LoCoCoConfig()
    config.validate()
    if has_heads(model):
        raise IncompatibleModelError("this model already has LoCoCo heads attached; call lococo.detach(model) first")
    layout = attention_layout(model)
    heads = LoCoCoHeads(config, layout.head_dim, layout.compressed_layers)
    for i in layout.compressed_layers:
        device = layout.devices[i]
        heads.head(i).to(device=device, dtype=_head_dtype(config, model, device or torch.device("cpu")))
    model.add_module(ATTR, heads)
    return heads


def detach(model: nn.Module) -> LoCoCoHeads:
    """Remove the heads from ``model`` and return them; the model is the original one again."""
    if not has_heads(model):
        raise IncompatibleModelError("this model has no LoCoCo heads attached")
    heads = getattr(model, ATTR)
    delattr(model, ATTR)
    return heads


def has_heads(model: nn.Module) -> bool:
    return isinstance(getattr(model, ATTR, None), LoCoCoHeads)


def get_heads(model: nn.Module) -> LoCoCoHeads:
    """The heads attached to ``model`` (clear error if there are none)."""
    if not has_heads(model):
        raise IncompatibleModelError(
            "this model has no LoCoCo heads: call lococo.attach(model, LoCoCoConfig(...)) or "
            "lococo.load_heads(model, DIR) first"
        )
    return getattr(model, ATTR)
