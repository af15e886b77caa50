"""The compressing cache: budgets, exactness below the budget, padding, gradients, dtypes, architectures."""

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import (
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

import lococo
from conftest import build_model, tiny_llama_config
from lococo import LoCoCoConfig
from lococo.policies.baselines import TOVAPolicy

SMALL = dict(mem_size=16, buffer=4, kernel_size=5)


def _attach(model, **kw):
    lococo.attach(model, LoCoCoConfig(**{**SMALL, **kw}))
    return model


def test_short_inputs_equal_the_uncompressed_model(tiny_llama):
    _attach(tiny_llama)
    ids = torch.randint(0, 128, (2, 20))  # N = M + buffer: nothing is compressed
    with torch.no_grad():
        ref = tiny_llama(ids).logits[:, -1]
    out = lococo.prefill(tiny_llama, ids, segment_size=6)
    assert torch.allclose(out.logits, ref, atol=1e-5)
    assert out.cache.compressed_layers[0].compressions == 0


def test_stored_length_reports_tokens_seen_and_stays_bounded(tiny_llama):
    _attach(tiny_llama)
    cache = lococo.make_cache(tiny_llama)
    segment = 8
    ids = torch.randint(0, 128, (1, 200))
    for start in range(0, 200, segment):
        lococo.prefill(tiny_llama, ids[:, : start + segment], cache=cache, segment_size=segment)
        assert cache.stored_length() <= 16 + segment
        assert cache.get_seq_length() == start + segment
    for step in range(40):  # decoding one token at a time
        with torch.no_grad():
            tiny_llama(torch.randint(0, 128, (1, 1)), past_key_values=cache, use_cache=True)
        assert cache.stored_length() <= 16 + 4 + 1
        assert cache.get_seq_length() == 201 + step


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    mem=st.integers(2, 24),
    buffer=st.integers(0, 6),
    segment=st.integers(1, 20),
    length=st.integers(1, 90),
    rho=st.sampled_from([0.0, 0.5, 1.0]),
)
def test_budget_holds_for_any_setting(tiny_llama, mem, buffer, segment, length, rho):
    if lococo.has_heads(tiny_llama):
        lococo.detach(tiny_llama)
    lococo.attach(tiny_llama, LoCoCoConfig(mem_size=mem, buffer=buffer, kernel_size=3, hh_keep_rate=rho))
    cache = lococo.make_cache(tiny_llama)
    ids = torch.randint(0, 128, (1, length))
    out = lococo.prefill(tiny_llama, ids, cache=cache, segment_size=segment)
    assert torch.isfinite(out.logits).all()
    layer = cache.compressed_layers[0]
    assert layer.stored <= mem + max(buffer, segment) + segment
    assert layer.get_seq_length() == length
    if length <= mem + buffer:
        assert layer.stored == length


def test_segment_bounds_are_anchored_at_the_end():
    assert lococo.generation.segment_bounds(10, 4) == [(0, 2), (2, 6), (6, 10)]
    assert lococo.generation.segment_bounds(8, 4) == [(0, 4), (4, 8)]


def _left_padded(lengths: tuple[int, ...], low: int = 0) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Random rows of ``lengths`` tokens, and the left-padded batch of them: (rows, ids, attention mask)."""
    rows = [torch.randint(low, 128, (1, n)) for n in lengths]
    width = max(lengths)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - row.shape[1] :] = row[0]
        mask[i, width - row.shape[1] :] = 1
    return rows, ids, mask


@pytest.mark.parametrize("policy", ["lococo", "window"])
def test_left_padded_batch_equals_each_row_alone(tiny_llama, policy):
    _attach(tiny_llama)
    rows, ids, mask = _left_padded((70, 43))
    kw = {} if policy == "lococo" else dict(mem_size=16, buffer=4)
    batched = lococo.prefill(tiny_llama, ids, mask, cache=lococo.make_cache(tiny_llama, policy, **kw), segment_size=8)
    for i, row in enumerate(rows):
        alone = lococo.prefill(tiny_llama, row, cache=lococo.make_cache(tiny_llama, policy, **kw), segment_size=8)
        assert torch.allclose(batched.logits[i], alone.logits[0], atol=1e-4), i


class _PerLayerTOVA(TOVAPolicy):
    """TOVA keeping a different number of slots in each layer (PyramidKV-style budgets through ``for_layer``)."""

    def __init__(self, sizes: tuple[int, ...], buffer: int = 4) -> None:
        super().__init__(max(sizes), buffer)
        self.sizes = sizes

    def for_layer(self, layer_idx: int) -> TOVAPolicy:
        return TOVAPolicy(self.sizes[layer_idx], self.buffer)


def test_layers_may_keep_different_numbers_of_slots_in_a_padded_batch(tiny_llama):
    rows, ids, mask = _left_padded((61, 37), low=1)

    def cache():
        return lococo.make_cache(tiny_llama, _PerLayerTOVA((24, 8)), reindex_positions=False)

    batched = lococo.prefill(tiny_llama, ids, mask, cache=(kept := cache()), segment_size=8)
    assert kept.compressed_layers[0].stored > kept.compressed_layers[1].stored
    steps = torch.randint(1, 128, (2, 6))
    with torch.no_grad():
        decoded = [
            tiny_llama(
                steps[:, i : i + 1],
                attention_mask=torch.cat([mask, torch.ones(2, i + 1, dtype=torch.long)], 1),
                position_ids=mask.sum(1, keepdim=True) + i,  # the padded row's own positions, as generate gives
                past_key_values=kept,
                use_cache=True,
            ).logits[:, -1]
            for i in range(steps.shape[1])
        ]
    for i, row in enumerate(rows):
        alone = lococo.prefill(tiny_llama, row, cache=(own := cache()), segment_size=8)
        assert torch.allclose(batched.logits[i], alone.logits[0], atol=1e-4), i
        with torch.no_grad():
            for step, logits in enumerate(decoded):
                out = tiny_llama(steps[i : i + 1, step : step + 1], past_key_values=own, use_cache=True).logits[0, -1]
                assert torch.allclose(logits[i], out, atol=1e-4), (i, step)


def test_batched_generate_equals_each_row_alone(tiny_llama):
    _attach(tiny_llama)
    rows, ids, mask = _left_padded((50, 31), low=1)
    kw = dict(max_new_tokens=30, do_sample=False, pad_token_id=0)
    batched = lococo.generate(tiny_llama, ids, mask, segment_size=8, **kw)[:, 50:]
    for i, row in enumerate(rows):
        alone = lococo.generate(tiny_llama, row, segment_size=8, **kw)[:, row.shape[1] :]
        assert torch.equal(batched[i], alone[0]), i


def test_sdpa_and_eager_agree():
    config = tiny_llama_config()
    sdpa = _attach(build_model(config, attn_implementation="sdpa"))
    eager = _attach(build_model(config, attn_implementation="eager"))
    for p in sdpa.lococo.parameters():
        torch.nn.init.normal_(p, std=0.05)  # non-trivial heads, shared by both models
    eager.lococo.load_state_dict(sdpa.lococo.state_dict())
    ids = torch.randint(0, 128, (1, 90))
    outs = [lococo.prefill(m, ids, segment_size=8) for m in (sdpa, eager)]
    assert eager.config._attn_implementation == "lococo_eager"
    assert outs[0].cache.compressed_layers[0].compressions > 0
    assert torch.allclose(outs[0].logits, outs[1].logits, atol=1e-4)


def test_gradients_reach_the_heads_and_lambda_only(tiny_llama):
    _attach(tiny_llama)
    for p in tiny_llama.parameters():
        p.requires_grad_(False)
    for p in tiny_llama.lococo.parameters():
        p.requires_grad_(True)
    cache = lococo.make_cache(tiny_llama)
    ids = torch.randint(0, 128, (1, 48))
    with torch.no_grad():
        tiny_llama(ids[:, :24], past_key_values=cache, use_cache=True)
    out = tiny_llama(ids[:, 24:], past_key_values=cache, use_cache=True, labels=ids[:, 24:])
    out.loss.backward()
    for name, p in tiny_llama.named_parameters():
        if name.startswith("lococo."):
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            if name.endswith(("lam_logit", "weight")):
                assert p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtypes_run_without_nan(dtype):
    model = build_model(tiny_llama_config()).to(dtype)
    lococo.attach(model, LoCoCoConfig(**SMALL, head_dtype="auto"))
    out = lococo.prefill(model, torch.randint(0, 128, (2, 80)), segment_size=8)
    assert out.logits.dtype == dtype
    assert torch.isfinite(out.logits.float()).all()


ARCHITECTURES = {
    "mistral": (MistralConfig, MistralForCausalLM, dict(sliding_window=None)),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM, dict(head_dim=16)),
}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_other_architectures(arch):
    config_cls, model_cls, extra = ARCHITECTURES[arch]
    config = config_cls(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, **extra)
    model = _attach(build_model(config, cls=model_cls))
    ids = torch.randint(0, 128, (1, 18))
    with torch.no_grad():
        ref = model(ids).logits[:, -1]
    assert torch.allclose(lococo.prefill(model, ids, segment_size=5).logits, ref, atol=1e-5)
    out = lococo.prefill(model, torch.randint(0, 128, (1, 90)), segment_size=8)
    assert torch.isfinite(out.logits).all() and out.cache.stored_length() <= 16 + 8


def test_cache_bytes_are_measured_from_the_tensors(tiny_llama):
    _attach(tiny_llama)
    out = lococo.prefill(tiny_llama, torch.randint(0, 128, (1, 100)), segment_size=8)
    stored = out.cache.stored_length()
    # 2 layers x (keys + values) x 2 kv heads x head_dim 16 x fp32
    assert out.cache.cache_bytes() == 2 * 2 * 2 * stored * 16 * 4


def test_transformers_chunked_prefill_keeps_the_budget(tiny_llama):
    _attach(tiny_llama)
    cache = lococo.make_cache(tiny_llama)
    ids = torch.randint(1, 128, (1, 96))
    out = tiny_llama.generate(ids, past_key_values=cache, prefill_chunk_size=8, max_new_tokens=10, do_sample=False)
    assert out.shape == (1, 106)
    assert cache.get_seq_length() == 105
    assert cache.stored_length() <= 16 + 4 + 1
    assert cache.compressed_layers[0].compressions > 5


class _HostSyncs:
    """Counts device-to-host reads (bool/int/item/tolist of a tensor) made from lococo's own source files."""

    NAMES = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist")

    def __init__(self, monkeypatch):
        import sys

        self.count = 0
        src = str(Path(lococo.__file__).parent)
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)

            def counting(t, *args, _original=original, **kwargs):
                if sys._getframe(1).f_code.co_filename.startswith(src):
                    self.count += 1
                return _original(t, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counting)


def _decode_steps(model, ids, mask, cache, steps):
    with torch.no_grad():
        for _ in range(steps):
            mask = torch.cat([mask, torch.ones(mask.shape[0], 1, dtype=mask.dtype)], dim=1)
            model(input_ids=ids[:, -1:], attention_mask=mask, position_ids=mask.sum(-1, keepdim=True) - 1,
                  past_key_values=cache, use_cache=True)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("padding", [0, 30])
def test_decoding_waits_for_the_device_at_most_once_per_step(monkeypatch, attn, padding):
    model = _attach(build_model(tiny_llama_config(), attn_implementation=attn))
    ids = torch.randint(1, 128, (2, 40))
    mask = torch.ones_like(ids)
    mask[1, :padding] = 0  # row 1 holds fewer tokens than the memory: its slots stay partly invalid
    cache = lococo.prefill(model, ids, mask, segment_size=8).cache
    syncs = _HostSyncs(monkeypatch)
    steps = 12  # several decode-time compressions (buffer 4)
    compressions = cache.compressed_layers[0].compressions
    _decode_steps(model, ids, mask, cache, steps)
    assert cache.compressed_layers[0].compressions > compressions
    if padding == 0 and attn == "sdpa":
        assert syncs.count == 0  # no mask reaches the layers: nothing to read back
    else:
        assert syncs.count <= steps  # one per forward, not one per layer


def _max_forward_length(model):
    lengths = []
    model.model.register_forward_pre_hook(lambda m, a, kw: lengths.append(kw["input_ids"].shape[1]), with_kwargs=True)
    return lengths


@pytest.mark.parametrize("policy", ["lococo", "tova"])
def test_plain_generate_with_a_long_prompt_reads_it_in_segments(tiny_llama, policy):
    _attach(tiny_llama, segment_size=8)
    kw = {} if policy == "lococo" else dict(mem_size=16, buffer=4)
    cache = lococo.make_cache(tiny_llama, policy, **kw)
    assert tiny_llama.generation_config.prefill_chunk_size == (8 if policy == "lococo" else 512)
    lengths = _max_forward_length(tiny_llama)
    ids = torch.randint(1, 128, (1, 96))
    tiny_llama.generate(ids, past_key_values=cache, max_new_tokens=5, do_sample=False)  # no chunk argument
    if policy == "lococo":
        assert max(lengths) == 8 and cache.compressed_layers[0].compressions > 5
    assert cache.stored_length() <= 16 + 4 + 1


def test_prefill_chunk_size_of_the_user_is_kept_and_none_leaves_the_config_alone(tiny_llama):
    tiny_llama.generation_config.prefill_chunk_size = 64
    lococo.make_cache(tiny_llama, "window", mem_size=16)
    assert tiny_llama.generation_config.prefill_chunk_size == 64
    tiny_llama.generation_config.prefill_chunk_size = None
    lococo.make_cache(tiny_llama, "window", mem_size=16, prefill_chunk_size=None)
    assert tiny_llama.generation_config.prefill_chunk_size is None
    with pytest.raises(lococo.ConfigError, match="prefill_chunk_size must be a positive integer"):
        lococo.make_cache(tiny_llama, "window", mem_size=16, prefill_chunk_size=0)


@pytest.mark.parametrize("head_dtype", ["float32", "bfloat16"])
def test_bf16_model_stays_close_to_fp32(head_dtype):
    """bf16 model (heads fp32 by default, or bf16), scores accumulated in fp32: finite, and on these inputs
    within 2x the uncompressed model's own bf16 error + 0.005. On other inputs a near-tied top-k can flip in
    bf16 and the error grows (benchmarks/results/bf16_error.txt: up to 8x, 0.017 nats, over 5 seeds)."""
    config = SMALL | {"head_dtype": head_dtype}
    ref = build_model(tiny_llama_config())
    lococo.attach(ref, LoCoCoConfig(**(config | {"head_dtype": "float32"})))
    for p in ref.lococo.parameters():
        torch.nn.init.normal_(p, std=0.05)
    low = build_model(tiny_llama_config()).to(torch.bfloat16)
    lococo.attach(low, LoCoCoConfig(**config))
    low.lococo.load_state_dict(ref.lococo.state_dict())
    assert next(low.lococo.parameters()).dtype == getattr(torch, head_dtype)
    ids = torch.randint(0, 128, (2, 90))

    def logprobs(model, policy):
        kw = {} if policy == "lococo" else dict(mem_size=16, buffer=4)
        cache = lococo.make_cache(model, policy, **kw)
        with torch.no_grad():
            out = lococo.prefill(model, ids, cache=cache, segment_size=8)
        if policy == "lococo":
            assert all(layer.scores is None or layer.scores.dtype == torch.float32 for layer in cache.layers)
        return out.logits.float().log_softmax(-1)

    error_full = (logprobs(low, "full") - logprobs(ref, "full")).abs().max()
    error_lococo = (logprobs(low, "lococo") - logprobs(ref, "lococo")).abs().max()
    assert torch.isfinite(error_lococo)
    # measured on these inputs: full 0.0031, lococo 0.0032 (fp32 heads) / 0.0035 (bf16 heads)
    assert error_lococo <= 2 * error_full + 0.005, (float(error_lococo), float(error_full))


def test_segment_loop_refuses_a_mask_that_does_not_cover_the_cache(tiny_llama):
    from lococo.generation import iter_segments

    cache = lococo.make_cache(tiny_llama, "window", mem_size=16)
    lococo.prefill(tiny_llama, torch.randint(0, 128, (1, 20)), cache=cache, segment_size=8)
    with pytest.raises(lococo.ConfigError, match="must cover the 20 tokens already in the cache plus the 5 new"):
        next(iter_segments(tiny_llama, torch.randint(0, 128, (1, 5)), cache, 8, attention_mask=torch.ones(1, 5)))
    with pytest.raises(lococo.ConfigError, match="grad has 1 flags for 2 segments"):
        next(iter_segments(tiny_llama, torch.randint(0, 128, (1, 10)), cache, 8, grad=[True]))


def _prefilled_as_last_and(mode: str) -> dict:
    """The same model and heads prefilled with 72 tokens (segments of 24, so every segment compresses) under
    "last" and ``mode`` scores: {mode: (model, prefill output)}, after checking that the logits are identical."""
    ids = torch.randint(0, 128, (1, 72), generator=torch.Generator().manual_seed(0))
    runs = {}
    for name in ("last", mode):
        model = build_model(tiny_llama_config())
        torch.manual_seed(0)
        runs[name] = (model, lococo.prefill(_attach(model, score_mode=name), ids, segment_size=24))
    torch.testing.assert_close(runs["last"][1].logits, runs[mode][1].logits, rtol=0, atol=0)
    return runs


def test_recent_scores_are_last_in_prefill_and_sum_the_queries_since_the_compression_in_decoding():
    model, out = _prefilled_as_last_and("recent")["recent"]
    layer = out.cache.compressed_layers[0]
    groups = 4 // 2  # query heads per KV head: each query's probabilities add 1 per head of its group
    since, compressions = 24, layer.compressions
    after_prefill = compressions
    for _ in range(12):
        with torch.no_grad():
            model(torch.randint(0, 128, (1, 1)), past_key_values=out.cache, use_cache=True)
        since = 1 if layer.compressions > compressions else since + 1
        compressions = layer.compressions
        torch.testing.assert_close(layer.scores.sum(-1), torch.full((1, 2), float(groups * since)))
    assert compressions >= after_prefill + 2  # the sums were checked across decoding-time compressions


@pytest.mark.parametrize("mix", [True, False])
def test_hybrid_scores_are_last_in_prefill_and_tova_s_layer_sums_in_decoding(mix):
    from lococo.policies.base import summed_over_layer

    model, _ = _prefilled_as_last_and("hybrid")["hybrid"]
    lococo.get_heads(model).config.mix_in_decoding = mix
    cache = lococo.make_cache(model)  # a cache of the updated config, fed the same prefill
    lococo.prefill(model, torch.randint(0, 128, (1, 72), generator=torch.Generator().manual_seed(0)), cache=cache,
                   segment_size=24)
    layer = cache.compressed_layers[0]
    for step in range(8):  # decode until a forward of one query leaves scores for the next compression
        with torch.no_grad():
            model(torch.tensor([[5 + step]]), past_key_values=cache, use_cache=True)
        if layer.scores is not None:
            break
    assert layer.score_queries == 1 and step > 0
    expected = layer.policy.compress(layer.keys, layer.values, summed_over_layer(layer.scores), None)
    selected = layer.keys.gather(2, expected.sources[..., None].expand(-1, -1, -1, layer.keys.shape[-1]))
    per_head = layer.policy.compress(layer.keys, layer.values, layer.scores, None)
    assert not torch.equal(per_head.sources, expected.sources)  # one query's heads disagree: the ranking matters
    with torch.no_grad():
        model(torch.tensor([[99]]), past_key_values=cache, use_cache=True)  # compresses with those scores first
    # mixed: the prefill's fold, ranked by the scores summed over the layer's heads (TOVA's ranking);
    # not mixed: the same ranking, every slot a stored token
    torch.testing.assert_close(layer.keys[:, :, :16], expected.keys if mix else selected)
    assert not torch.allclose(expected.keys, selected)  # the two folds differ: the check could fail
