"""The ``layer`` training signal: every compressed layer learns, on its own, to keep what its next queries read.

The frozen model reads a training sequence once, with a full cache and no gradient, in the chunks of
:func:`lococo.training.loop.chunk_plan`. Its cache layers are :class:`TeacherLayer` s: besides storing every
token they keep, for the latest chunk, what their attention saw (the new keys and values, the queries, the
attention output over every token so far; :mod:`lococo.attention` hands them the queries and output).

Beside it, one student :class:`~lococo.cache.CompressedLayer` per compressed layer, with the policy and heads
inference uses, reads the same keys and values: it compresses exactly as the cache does at inference (same
trigger, same buffer, the scores of its own attention, decoded tokens scored by one query), and the teacher's
queries attend to its ``[memory; new tokens]``. A chunk's loss is the mean over layers of

    ||out_student - out_full||^2 / ||out_full||^2      (attention outputs of the chunk, before o_proj)

so no backward pass runs through the model: the gradient goes from each layer's attention over its memory
into the head that built it, through the compressions since the last truncation (``tbptt``). A layer's
inputs are those of the full-cache model (teacher forcing per layer), so errors do not compound across
layers here; fine-tune end to end with ``lm`` or ``kl`` (``init_heads``) to train for that.
"""

from __future__ import annotations

import torch

from ..attention import _visible_from_mask, attention_with_scores, column_scores
from ..cache import CompressedCache, CompressedLayer
from ..compressor.heads import get_heads
from ..compressor.policy import LoCoCoPolicy
from ..generation import iter_segments
from ..policies.baselines import FullPolicy


class TeacherLayer(CompressedLayer):
    """A full-cache layer that keeps what its latest forward's attention saw (``seen_chunk``)."""

    observes = True

    def __init__(self) -> None:
        super().__init__(FullPolicy())
        self.seen_chunk: dict | None = None

    def update(self, key_states, value_states, *args, **kwargs):
        self.seen_chunk = {"keys": key_states, "values": value_states}
        return super().update(key_states, value_states, *args, **kwargs)

    def observe(self, query, out, scaling, softcap, sinks) -> None:
        self.seen_chunk.update(query=query, out=out, scaling=scaling, softcap=softcap, sinks=sinks)


def teacher_cache(model) -> CompressedCache:
    """A full cache of ``model`` whose compressed (global attention) layers are :class:`TeacherLayer` s."""
    cache = CompressedCache(model, FullPolicy())
    cache.layers = [TeacherLayer() if isinstance(layer, CompressedLayer) else layer for layer in cache.layers]
    return cache


def student_layers(model) -> dict[int, CompressedLayer]:
    """One inference cache layer per compressed layer of ``model``, under its LoCoCo heads and their positions
    scheme: the layers of the cache inference would build."""
    policy = LoCoCoPolicy(get_heads(model))
    cache = CompressedCache(model, policy, positions=policy.heads.config.positions)
    return {i: layer for i, layer in enumerate(cache.layers) if isinstance(layer, CompressedLayer)}


def relative_error(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``||out - target||^2 / ||target||^2`` (fp32): 0 when the memory keeps what the layer reads, 1 when the
    output is lost altogether (a zero output)."""
    target = target.detach().float()
    return (out.float() - target).pow(2).sum() / target.pow(2).sum().clamp_min(1e-12)


def student_step(layer: CompressedLayer, seen: dict) -> torch.Tensor:
    """One chunk through one student layer: update (compressing first if due), attention of the teacher's
    queries over ``[memory; new]``, scores for the next compression; returns the chunk's relative error."""
    keys, values = layer.update(seen["keys"], seen["values"])
    query = seen["query"]
    b, _, q_len, _ = query.shape
    visible = _visible_from_mask(None, b, q_len, keys.shape[2], query.device)
    out, scores = attention_with_scores(query, keys, values, seen["scaling"], visible, None, seen["softcap"],
                                        seen["sinks"], causal=True)
    window = layer.score_request()
    if window is not None:
        if window and window < q_len:
            scores = column_scores(query, keys, seen["scaling"], visible, None, window, seen["softcap"],
                                   seen["sinks"], causal=True)
        layer.record_scores(scores, q_len)
    return relative_error(out, seen["out"])


class LayerwiseReader:
    """Reads one batch of sequences chunk by chunk for the ``layer`` objective (see the module docstring).

    ``chunks(plan, grad)`` yields, per chunk, ``(loss, {"layer": loss value}, tokens)``; ``detach_()`` is
    the truncated back-propagation boundary.
    """

    def __init__(self, model, ids: torch.Tensor) -> None:
        self.model, self.ids = model, ids
        self.teacher = teacher_cache(model)
        self.students = student_layers(model)

    def chunks(self, plan: list[tuple[int, int]], grad: list[bool]):
        for (start, stop), keep_graph in zip(plan, grad, strict=True):
            with torch.no_grad():
                for _ in iter_segments(self.model, self.ids[:, start:stop], self.teacher, stop - start,
                                       logits_to_keep=1):
                    pass
            with torch.enable_grad() if keep_graph else torch.no_grad():
                losses = [student_step(layer, self.teacher.layers[i].seen_chunk) for i, layer in self.students.items()]
                loss = torch.stack(losses).mean()
            yield loss, {"layer": loss.item()}, (stop - start) * self.ids.shape[0]

    def detach_(self) -> None:
        for layer in self.students.values():
            layer.detach_()
