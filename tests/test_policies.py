"""The baseline cache policies: budgets, equality with the full cache, hand-made selections, batching."""

from __future__ import annotations

import pytest
import torch

import lococo
from conftest import build_model, tiny_llama_config
from lococo import make_cache, make_policy, prefill
from lococo.errors import ConfigError
from lococo.generation import position_ids_from_mask

M, BUFFER, SEGMENT = 16, 4, 8

# Settings used with the tiny models (M = 16): SnapKV's default window (32) would fill the budget.
POLICY_KWARGS: dict[str, dict] = {
    "window": {},
    "streaming": {},
    "h2o": {},
    "h2o-last": {},
    "tova": {},
    "snapkv": {"score_window": 4},
    "random": {},
    "meanpool": {},
}
DETERMINISTIC = [name for name in POLICY_KWARGS if name != "random"]


def cache_for(model, name: str, **overrides):
    kwargs = {"mem_size": M, "buffer": BUFFER, **POLICY_KWARGS.get(name, {}), **overrides}
    return make_cache(model, name, **kwargs)


def decode_step(model, cache, token: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One decoding step for ``token [b]`` with left-padding ``mask [b, seen]``: (last logits, new mask)."""
    mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
    positions = position_ids_from_mask(mask)[:, -1:]
    with torch.no_grad():
        out = model(
            input_ids=token[:, None],
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        )
    return out.logits[:, -1], mask


@pytest.fixture(params=["sdpa", "eager"])
def model(request):
    """The tiny GQA Llama under sdpa and under eager attention."""
    return build_model(tiny_llama_config(), attn_implementation=request.param)


# --------------------------------------------------------------------------------------------------
# Budgets and equality with the full cache on a real (tiny) model.


@pytest.mark.parametrize("name", list(POLICY_KWARGS))
def test_budget_kept_in_prefill_and_decoding(tiny_llama, name):
    torch.manual_seed(1)
    ids = torch.randint(0, 128, (1, 100))
    cache = cache_for(tiny_llama, name)
    for stop in range(SEGMENT, ids.shape[1] + SEGMENT, SEGMENT):
        prefill(tiny_llama, ids[:, : min(stop, ids.shape[1])], cache=cache, segment_size=SEGMENT)
        assert cache.stored_length() <= M + SEGMENT
    mask = torch.ones_like(ids)
    token = ids[:, -1]
    for _ in range(30):
        logits, mask = decode_step(tiny_llama, cache, token, mask)
        assert torch.isfinite(logits).all()
        assert all(layer.stored <= M + BUFFER + 1 for layer in cache.compressed_layers)
        token = logits.argmax(-1)
    assert all(layer.compressions > 0 for layer in cache.compressed_layers)
    assert cache.get_seq_length() == 130


@pytest.mark.parametrize("name", list(POLICY_KWARGS))
def test_equals_full_within_budget(tiny_llama, name):
    torch.manual_seed(2)
    ids = torch.randint(0, 128, (1, M + BUFFER))
    results = []
    for policy in ("full", name):
        cache = cache_for(tiny_llama, policy)
        logits = [prefill(tiny_llama, ids, cache=cache, segment_size=SEGMENT).logits]
        logits.append(decode_step(tiny_llama, cache, ids[:, -1], torch.ones_like(ids))[0])
        assert all(layer.compressions == 0 for layer in cache.compressed_layers)
        results.append(torch.stack(logits))
    torch.testing.assert_close(results[1], results[0], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------------
# Batching with left padding: each row as if alone, under sdpa and eager.


@pytest.mark.parametrize("name", list(POLICY_KWARGS))
def test_left_padded_batch_matches_rows_alone(model, name):
    torch.manual_seed(3)
    lengths = [60, 45]
    width = max(lengths)
    rows = [torch.randint(0, 128, (n,)) for n in lengths]
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = row
        mask[i, width - len(row) :] = 1
    next_tokens = torch.tensor([[5, 7], [11, 13], [17, 19], [23, 29], [31, 37], [41, 43]])

    cache = cache_for(model, name)
    batched = [prefill(model, ids, mask, cache=cache, segment_size=SEGMENT).logits]
    for token in next_tokens:
        logits, mask = decode_step(model, cache, token, mask)
        batched.append(logits)
    batched = torch.stack(batched, dim=1)  # [b, steps, vocab]
    assert torch.isfinite(batched).all()
    if name == "random":  # one generator draws for the whole batch: rows differ from rows alone
        return

    for i, row in enumerate(rows):
        alone_cache = cache_for(model, name)
        alone = [prefill(model, row[None], cache=alone_cache, segment_size=SEGMENT).logits]
        alone_mask = torch.ones(1, len(row), dtype=torch.long)
        for token in next_tokens[:, i : i + 1]:
            logits, alone_mask = decode_step(model, alone_cache, token, alone_mask)
            alone.append(logits)
        torch.testing.assert_close(batched[i], torch.cat(alone), atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------------------
# compress() on hand-made tensors: keys and values encode their slot position in every channel.


def encoded(batch: int, heads: int, length: int, dim: int = 4) -> torch.Tensor:
    """``[batch, heads, length, dim]`` whose slot ``l`` holds the value ``l`` everywhere."""
    slots = torch.arange(length, dtype=torch.float32)[None, None, :, None]
    return slots.expand(batch, heads, length, dim).clone()


def kept_positions(name: str, scores: torch.Tensor, valid: torch.Tensor | None = None, **kwargs):
    """Positions kept by policy ``name`` on encoded keys (per head), and the carried scores."""
    b, h, length = scores.shape
    policy = make_policy(name, **kwargs)
    keys = encoded(b, h, length)
    k, v, s, _ = policy.compress(keys, keys.clone(), scores, valid)
    assert k.shape == v.shape == (b, h, policy.mem_size, keys.shape[-1])
    torch.testing.assert_close(k, v)
    return k[..., 0].long().tolist(), s


def test_h2o_keeps_recent_and_accumulated_heavy_hitters():
    # slots 0-2 are padding (with high scores), 9-11 the recent ones (head 0 gives them no attention)
    scores = torch.tensor(
        [
            [
                [0.0, 3.0, 100.0, 0.1, 0.2, 2.0, 0.3, 1.0, 0.05, 0.0, 0.0, 0.0],
                [5.0, 0.0, 100.0, 4.0, 0.5, 0.1, 0.3, 0.2, 0.05, 0.4, 0.6, 9.0],
            ]
        ]
    )
    valid = torch.ones(1, 12, dtype=torch.bool)
    valid[0, :3] = False
    policy = make_policy("h2o", mem_size=6, heavy_ratio=0.5)
    assert policy.score_mode == "accumulated" and (policy.n_heavy, policy.n_recent) == (3, 3)
    kept, carried = kept_positions("h2o", scores, valid, mem_size=6, heavy_ratio=0.5)
    assert kept == [[[5, 6, 7, 9, 10, 11], [3, 4, 6, 9, 10, 11]]]
    torch.testing.assert_close(carried, scores.gather(-1, torch.tensor(kept)))  # accumulated scores travel


def test_h2o_heavy_ratio_extremes():
    scores = torch.arange(10.0).flip(-1)[None, None]  # older tokens score higher
    assert kept_positions("h2o", scores, mem_size=4, heavy_ratio=1.0)[0] == [[[0, 1, 2, 3]]]
    assert kept_positions("h2o", scores, mem_size=4, heavy_ratio=0.0)[0] == [[[6, 7, 8, 9]]]


TOP_SCORES = torch.tensor([[[0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.0, 0.5], [9.0, 0.0, 0.0, 1.0, 2.0, 0.0, 3.0, 0.0]]])
TOP_VALID = torch.tensor([[False, True, True, True, True, True, True, True]])  # slot 0 is padding


@pytest.mark.parametrize(("name", "kwargs"), [("h2o-last", {}), ("tova", {"layer_average": False})])
def test_top_score_policies_keep_the_top_m_per_head(name, kwargs):
    kept, _ = kept_positions(name, TOP_SCORES, TOP_VALID, mem_size=3, **kwargs)
    assert kept == [[[1, 3, 5], [3, 4, 6]]]


def test_tova_averages_over_all_heads_of_the_layer():
    # head sums over slots 1..7: 0.9, 0.2, 1.8, 2.3, 0.7, 3.0, 0.5: the same top 3 for every KV head
    kept, _ = kept_positions("tova", TOP_SCORES, TOP_VALID, mem_size=3)
    assert kept == [[[3, 4, 6], [3, 4, 6]]]


def test_score_requests_of_the_policies():
    assert make_policy("h2o-last").score_mode == "last"
    tova = make_policy("tova")
    assert (tova.score_mode, tova.score_window) == ("window", 1)
    snapkv = make_policy("snapkv")
    assert (snapkv.score_mode, snapkv.score_window) == ("window", 32)
    assert make_policy("snapkv", score_window=8).score_window == 8
    for name in ("window", "streaming", "random", "meanpool"):
        assert make_policy(name).score_mode is None


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_snapkv_pools_the_prefix_and_keeps_the_window(pooling):
    # 10 tokens before a window of 2. A spike at 4 lifts its neighbours 3 and 5 after pooling (kernel 3),
    # which beat the isolated 0.6 at 9. The window's huge score must not leak into the prefix pooling.
    scores = torch.tensor([[[0.0, 0, 0, 0, 6, 0, 0, 0, 0, 0.6, 100, 0]]])
    kept, _ = kept_positions("snapkv", scores, mem_size=5, score_window=2, kernel_size=3, pooling=pooling)
    assert kept == [[[3, 4, 5, 10, 11]]]


def test_snapkv_ignores_padding_and_handles_a_full_window():
    scores = torch.tensor([[[50.0, 0, 0, 0, 6, 0, 0, 0, 0, 0.6, 0, 0]]])
    valid = torch.tensor([[False] + [True] * 11])
    kept, _ = kept_positions("snapkv", scores, valid, mem_size=5, score_window=2, kernel_size=3)
    assert kept == [[[3, 4, 5, 10, 11]]]
    kept, _ = kept_positions("snapkv", scores, valid, mem_size=4, score_window=4)
    assert kept == [[[8, 9, 10, 11]]]


def test_streaming_batched_sinks_follow_each_row():
    policy = make_policy("streaming", mem_size=6, n_sink=2)
    keys = encoded(2, 2, 12)
    valid = torch.tensor([[False, False, False] + [True] * 9, [True] * 12])
    k, _, _, _ = policy.compress(keys, keys.clone(), None, valid)
    assert k[..., 0].long().tolist() == [[[3, 4, 8, 9, 10, 11]] * 2, [[0, 1, 8, 9, 10, 11]] * 2]


def test_meanpool_averages_older_tokens_in_near_equal_groups():
    valid = torch.tensor([[False, False] + [True] * 8])
    policy = make_policy("meanpool", mem_size=4, n_merged=2)
    keys = encoded(1, 1, 10)
    k, _, _, _ = policy.compress(keys, keys, None, valid)
    assert k[0, 0, :, 0].tolist() == [3.0, 6.0, 8.0, 9.0]  # means of {2,3,4} and {5,6,7}
    k, _, _, _ = policy.compress(encoded(1, 1, 9), encoded(1, 1, 9), None, None)
    assert k[0, 0, :, 0].tolist() == [1.5, 5.0, 7.0, 8.0]  # groups of 4 and 3
    assert make_policy("meanpool", mem_size=8).n_merged == 4


def test_random_is_seeded_and_ordered():
    keys = encoded(2, 2, 40)
    valid = torch.ones(2, 40, dtype=torch.bool)
    valid[1, :10] = False

    def run(seed: int) -> torch.Tensor:
        policy = make_policy("random", mem_size=8, seed=seed)
        return policy.compress(keys, keys, None, valid)[0][..., 0]

    first = run(0)
    assert torch.equal(first, run(0))
    assert not torch.equal(first, run(1))
    assert (first.diff(dim=-1) > 0).all()
    assert (first[1] >= 10).all()


@pytest.mark.parametrize("name", list(POLICY_KWARGS))
@pytest.mark.parametrize("kv_heads", [1, 3])
def test_compress_returns_budget_and_never_padding(name, kv_heads):
    torch.manual_seed(4)
    b, length, mem = 3, 30, 8
    policy = make_policy(name, mem_size=mem, buffer=2, **POLICY_KWARGS[name])
    pad = torch.tensor([0, 5, 12])  # every row keeps more than mem_size + buffer real tokens
    valid = torch.arange(length)[None, :] >= pad[:, None]
    keys = torch.rand(b, kv_heads, length, 4)
    keys = keys.masked_fill(~valid[:, None, :, None], float("nan"))  # padding must never leak in
    scores = None if policy.score_mode is None else torch.rand(b, kv_heads, length) * 10
    if scores is not None:
        scores = scores.masked_fill(~valid[:, None, :], 1e6)
    k, v, s, _ = policy.compress(keys, keys.clone(), scores, valid)
    assert k.shape == v.shape == (b, kv_heads, mem, 4)
    assert torch.isfinite(k).all() and torch.isfinite(v).all()
    if policy.score_mode == "accumulated":
        assert s is not None and s.shape == (b, kv_heads, mem) and (s < 1e6).all()


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("streaming", {"n_sink": 17}),
        ("h2o", {"heavy_ratio": 1.5}),
        ("snapkv", {"score_window": 0}),
        ("snapkv", {"kernel_size": 4}),
        ("snapkv", {"pooling": "median"}),
        ("meanpool", {"n_merged": 17}),
    ],
)
def test_invalid_settings_are_config_errors(name, kwargs):
    with pytest.raises(ConfigError):
        make_policy(name, mem_size=16, **kwargs)


def test_no_policy_name_is_branched_on_outside_the_registry():
    """Callers build every policy one way; only lococo/policies/ may know a policy by its name."""
    import re
    from pathlib import Path

    src = Path(lococo.__file__).parent
    pattern = re.compile(r"""policy\s*(==|!=|in)\s*\(?["']""")
    offenders = [f"{p.relative_to(src)}:{i}" for p in src.rglob("*.py") if "policies" not in p.parts
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


def test_settings_a_policy_does_not_take_are_clear_errors(tiny_llama):
    with pytest.raises(lococo.ConfigError, match="policy 'window' takes mem_size, buffer; not heads"):
        lococo.make_cache(tiny_llama, "window", mem_size=16, heads="x")
    with pytest.raises(lococo.IncompatibleModelError, match="no LoCoCo heads"):
        lococo.make_cache(tiny_llama, "lococo")  # nothing attached, nothing asked for
    cache = lococo.make_cache(tiny_llama, "full", mem_size=16)  # one loop can build every policy
    assert not cache.policy.compresses
