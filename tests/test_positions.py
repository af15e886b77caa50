"""Positions inside the cache (``reindex_positions``): exact StreamingLLM semantics, any policy, padding."""

import pytest
import torch
from transformers import DynamicCache

import lococo
from conftest import build_model, tiny_llama_config
from lococo import LoCoCoConfig

MEM, BUFFER, SEG = 16, 4, 8
POLICIES = ["streaming", "window", "h2o", "tova", "snapkv", "meanpool", "lococo"]


def _cache(model, policy, **kw):
    if policy == "lococo":
        if not lococo.has_heads(model):
            lococo.attach(model, LoCoCoConfig(mem_size=MEM, buffer=BUFFER, kernel_size=5))
            for p in model.lococo.parameters():
                torch.nn.init.normal_(p, std=0.05)  # non-trivial mixing: fused slots are real mixtures
        return lococo.make_cache(model, "lococo", **kw)
    if policy == "snapkv":
        kw["score_window"] = 4  # the default (32) exceeds M = 16 here, which makes it a window
    return lococo.make_cache(model, policy, mem_size=MEM, buffer=BUFFER, **kw)


def test_streaming_equals_the_model_reading_the_kept_tokens_at_contiguous_positions():
    """StreamingLLM's definition: after a compression the model attends to the sinks and the recent window as
    if they were one contiguous text right before the incoming tokens. One layer, so that the kept keys and
    values depend only on their tokens and positions (deeper layers also saw the evicted tokens)."""
    tiny_llama = build_model(tiny_llama_config(num_hidden_layers=1))
    ids = torch.randint(0, 128, (1, 48))
    cache = lococo.make_cache(tiny_llama, "streaming", mem_size=MEM, buffer=0, n_sink=4, reindex_positions=True)
    lococo.prefill(tiny_llama, ids[:, :40], cache=cache, segment_size=SEG)
    with torch.no_grad():
        got = tiny_llama(ids[:, 40:], past_key_values=cache, use_cache=True).logits
    assert cache.compressed_layers[0].compressions > 0
    kept = torch.cat([ids[:, :4], ids[:, 28:40]], dim=1)  # 4 sinks + the 12 most recent tokens
    reference = DynamicCache(config=tiny_llama.config)
    with torch.no_grad():
        tiny_llama(kept, position_ids=torch.arange(24, 40)[None], past_key_values=reference, use_cache=True)
        want = tiny_llama(ids[:, 40:], position_ids=torch.arange(40, 48)[None], past_key_values=reference,
                          use_cache=True).logits
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("policy", POLICIES)
def test_kept_slots_sit_right_before_the_next_token_and_padding_changes_nothing(tiny_llama, policy):
    lengths = [70, 43]
    width = max(lengths)
    rows = [torch.randint(0, 128, (1, n)) for n in lengths]
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - row.shape[1] :] = row[0]
        mask[i, width - row.shape[1] :] = 1
    cache = _cache(tiny_llama, policy, reindex_positions=True)
    batched = lococo.prefill(tiny_llama, ids, mask, cache=cache, segment_size=SEG)
    for layer in cache.compressed_layers:
        assert layer.compressions > 0
        for i, n in enumerate(lengths):
            valid = torch.ones(layer.stored, dtype=torch.bool) if layer.valid is None else layer.valid[i]
            held = layer.positions[i][:, valid].sort(dim=-1).values  # [kv_heads, slots]
            assert torch.equal(held, torch.arange(n - held.shape[-1], n).expand_as(held)), (policy, i)
    plain = lococo.prefill(tiny_llama, rows[0], cache=_cache(tiny_llama, policy, reindex_positions=False),
                           segment_size=SEG)
    for i, row in enumerate(rows):
        alone = lococo.prefill(tiny_llama, row, cache=_cache(tiny_llama, policy, reindex_positions=True),
                               segment_size=SEG)
        assert torch.allclose(batched.logits[i], alone.logits[0], atol=1e-4), (policy, i)
    if policy != "window":  # the window keeps contiguous recent tokens: nothing moves
        assert not torch.allclose(plain.logits, batched.logits[0], atol=1e-4)


def test_key_rotation_moves_keys_as_the_model_would_rotate_them_there(tiny_llama):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from lococo.positions import KeyRotation

    raw = torch.randn(1, 2, 5, 16)

    def at(positions):
        cos, sin = tiny_llama.model.rotary_emb(raw, torch.as_tensor(positions)[None])
        return apply_rotary_pos_emb(raw, raw, cos, sin)[1]

    before, after = [3, 7, 100, 5000, 20], [0, 9, 60, 12, 20_020]
    shift = (torch.tensor(after) - torch.tensor(before)).expand(1, 2, 5)
    # fp32 angles, as the model's own: at 20K positions the highest frequency is off by ~1e-4
    assert torch.allclose(KeyRotation(tiny_llama)(at(before), shift), at(after), atol=1e-3)


def test_window_is_unchanged_by_reindexing(tiny_llama):
    ids = torch.randint(0, 128, (1, 60))
    outs = [lococo.prefill(tiny_llama, ids, cache=_cache(tiny_llama, "window", reindex_positions=r), segment_size=SEG)
            for r in (False, True)]
    assert torch.allclose(outs[0].logits, outs[1].logits, atol=1e-5)


def test_decoding_with_reindexed_positions_keeps_the_budget(tiny_llama):
    cache = _cache(tiny_llama, "lococo", reindex_positions=True)
    out = lococo.generate(tiny_llama, torch.randint(1, 128, (1, 50)), max_new_tokens=20, do_sample=False,
                          pad_token_id=0, segment_size=SEG, cache=cache)
    assert out.shape[1] == 70 and cache.stored_length() <= MEM + BUFFER + 1
    layer = cache.compressed_layers[0]
    assert layer.positions.amax() == 68  # the newest stored token: 50 prompt tokens + 19 fed back


def test_reindexing_is_refused_without_a_rotary_embedding():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=2, n_positions=256)).eval()
    with pytest.raises(lococo.IncompatibleModelError, match="reindex_positions"):
        lococo.make_cache(model, "tova", mem_size=MEM, reindex_positions=True)


def test_full_cache_ignores_reindexing():
    model = build_model(tiny_llama_config())
    cache = lococo.make_cache(model, "full", reindex_positions=True)
    assert not cache.reindex_positions


@pytest.mark.parametrize("default", ["absolute", "reindexed", "clamped"])
def test_policy_default_applies_where_the_model_allows_it(monkeypatch, tiny_llama, default):
    from transformers import GPT2Config, GPT2LMHeadModel

    from lococo.policies.baselines import TOVAPolicy

    monkeypatch.setattr(TOVAPolicy, "position_scheme", default)
    assert lococo.make_cache(tiny_llama, "tova", mem_size=MEM).position_scheme == default
    assert lococo.make_cache(tiny_llama, "tova", mem_size=MEM).reindex_positions is (default == "reindexed")
    assert lococo.make_cache(tiny_llama, "tova", mem_size=MEM, reindex_positions=False).reindex_positions is False
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=2, n_positions=256)).eval()
    assert lococo.make_cache(gpt2, "tova", mem_size=MEM).reindex_positions is False  # learned positions: absolute


class _ShiftRecorder:
    """A stand-in rotation that records the shift each slot gets (keys come back unchanged)."""

    def __call__(self, keys, shift):
        self.shift = shift
        return keys


def test_clamped_moves_only_slots_past_the_distance_and_keeps_their_order():
    from lococo.positions import clamped

    positions = torch.tensor([[[0, 5, 50, 90, 99], [3, 60, 81, 85, 99]]])  # [b=1, kv_heads=2, slots]
    valid = torch.tensor([[False, True, True, True, True]])  # the first slot is padding
    rotate = _ShiftRecorder()
    keys = torch.randn(1, 2, 5, 4)
    out, target = clamped(keys, positions, valid, torch.tensor([[100]]), rotate, max_distance=20)
    # boundary 80: head 0 moves 5 and 50 (padding never moves), head 1 moves 60; the rest stay where they are
    assert target.tolist() == [[[0, 78, 79, 90, 99], [3, 79, 81, 85, 99]]]
    assert torch.equal(rotate.shift, target - positions) and torch.equal(out, keys)


def _clamp_model():
    from lococo.positions import RESERVED_SEGMENT

    # a context length that leaves 40 positions of distance for the kept slots (D = 40)
    return build_model(tiny_llama_config(max_position_embeddings=MEM + BUFFER + RESERVED_SEGMENT + 40))


@pytest.mark.parametrize("policy", ["tova", "lococo"])
def test_clamped_reads_as_absolute_within_the_models_length_and_bounds_distances_past_it(policy):
    model = _clamp_model()
    ids = torch.randint(0, 128, (1, 120))
    short = [lococo.prefill(model, ids[:, :40], cache=_cache(model, policy, positions=scheme), segment_size=SEG)
             for scheme in ("absolute", "clamped")]
    assert torch.equal(short[0].logits, short[1].logits)  # no slot is ever 40 tokens back: nothing moves
    cache = _cache(model, policy, positions="clamped")
    assert cache.position_scheme == "clamped"
    out = lococo.prefill(model, ids, cache=cache, segment_size=SEG)
    for layer in cache.compressed_layers:
        held = layer.positions[0]  # [kv_heads, slots]
        # the last compression (before the last segment) put every slot within D + M of that segment
        assert int(held.amin()) >= 120 - SEG - 40 - MEM
        assert bool((held.sort(dim=-1).values.diff(dim=-1) > 0).all())  # no two slots at one position
        assert int(held.amax()) == 119
    absolute = lococo.prefill(model, ids, cache=_cache(model, policy, positions="absolute"), segment_size=SEG)
    assert not torch.allclose(out.logits, absolute.logits, atol=1e-4)  # past D the far slots moved


def test_positions_scheme_is_checked_and_given_once(tiny_llama):
    with pytest.raises(lococo.ConfigError, match="positions must be one of"):
        lococo.make_cache(tiny_llama, "tova", mem_size=MEM, positions="relative")
    with pytest.raises(lococo.ConfigError, match="not both"):
        lococo.make_cache(tiny_llama, "tova", mem_size=MEM, positions="clamped", reindex_positions=True)


def test_lococo_heads_trained_with_absolute_positions_read_clamped_by_default(tiny_llama):
    cache = _cache(tiny_llama, "lococo")
    assert tiny_llama.lococo.config.positions == "absolute" and cache.position_scheme == "clamped"
    assert _cache(tiny_llama, "lococo", positions="absolute").position_scheme == "absolute"
    assert _cache(tiny_llama, "streaming").position_scheme == "reindexed"  # the heuristics keep theirs
    assert _cache(tiny_llama, "tova").position_scheme == "clamped"


def test_the_command_line_offers_every_positions_scheme():
    from lococo.evaluation.cli import POSITIONS
    from lococo.positions import POSITION_SCHEMES

    assert POSITIONS == POSITION_SCHEMES
