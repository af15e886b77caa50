"""The model matrix: tiny random models of every supported family, built from transformers' own config classes.

For each family that runs every policy: (a) tokens within the budget give exactly the plain model's logits (TOVA
and fresh LoCoCo heads); (b) the budget holds through chunked prefill, ``lococo.generate`` and a plain
``model.generate`` and every compressed layer receives its scores (so the attention really calls ``cache.update``
and dispatches through transformers' AttentionInterface); (c) sliding-window layers keep transformers' own window;
(d) heads saved on one family are refused on another. Left-padded batches are checked on two families
(tests/test_attention.py covers them in depth on Llama).

Families lococo runs with some policies only (``PARTIAL``: ALiBi, attention outside the AttentionInterface,
multi-head latent attention, hybrids, every layer sliding): each policy that works passes (a) and (b) without the
scores, and every other policy is refused with a message naming the reason and the policies that work. README
"Supported models" is these two tables.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import transformers
from transformers.cache_utils import DynamicCache, DynamicSlidingWindowLayer

import lococo
from conftest import build_model
from lococo import IncompatibleModelError, LoCoCoConfig
from lococo.cache import CompressedLayer
from lococo.models_support import attention_layout

TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            tie_word_embeddings=False)
MOE = dict(num_experts_per_tok=2, moe_intermediate_size=32)
SLIDING = dict(sliding_window=8, layer_types=["sliding_attention", "full_attention"])
DROP = object()  # a TINY setting this family's config does not take

# family: (config class, model class, config overrides, attention implementation, positions)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}, "sdpa", "rotary"),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=None), "sdpa", "rotary"),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(num_local_experts=4, num_experts_per_tok=2), "sdpa",
                "rotary"),
    # layers from max_window_layers on slide: layer 0 global, layer 1 sliding
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(use_sliding_window=True, sliding_window=8, max_window_layers=1),
              "sdpa", "rotary"),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", dict(num_experts=4, shared_expert_intermediate_size=32,
                                                               **MOE), "sdpa", "rotary"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=16), "sdpa", "rotary"),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(head_dim=16, num_experts=4, **MOE), "sdpa", "rotary"),
    # attention logit soft-capping (eager only in transformers)
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(head_dim=16, **SLIDING), "eager", "rotary"),
    # one KV head, as Gemma 3 1B
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(head_dim=16, num_key_value_heads=1, **SLIDING),
                    "sdpa", "rotary"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}, "sdpa", "rotary"),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}, "sdpa", "rotary"),
    "granite": ("GraniteConfig", "GraniteForCausalLM", {}, "sdpa", "rotary"),
    "cohere2": ("Cohere2Config", "Cohere2ForCausalLM", dict(SLIDING), "sdpa", "rotary"),
    "stablelm": ("StableLmConfig", "StableLmForCausalLM", {}, "sdpa", "partial rotary"),
    "phi": ("PhiConfig", "PhiForCausalLM", dict(num_key_value_heads=DROP), "sdpa", "partial rotary"),
    # the cache reaches the attention as `layer_past`; no GQA
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(num_key_value_heads=DROP), "sdpa", "partial rotary"),
    "starcoder2": ("Starcoder2Config", "Starcoder2ForCausalLM", {}, "sdpa", "rotary"),
    "olmo3": ("Olmo3Config", "Olmo3ForCausalLM", dict(SLIDING), "sdpa", "rotary"),
    # chunked attention on layer 0 (kept as transformers keeps it: a window layer), layer 1 global without RoPE
    "llama4_text": ("Llama4TextConfig", "Llama4ForCausalLM",
                    dict(head_dim=16, attention_chunk_size=8, num_local_experts=2, interleave_moe_layer_step=1,
                         intermediate_size_mlp=128, no_rope_layers=[1, 0]), "sdpa", "rotary"),
    # layer 1 has no rotary embedding (NoPE) and slides
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM", dict(no_rope_layers=[1, 0], use_sliding_window=True,
                                                           sliding_window=8), "sdpa", "rotary"),
    # attention sinks and sliding layers (eager only in transformers)
    "gpt_oss": ("GptOssConfig", "GptOssForCausalLM", dict(head_dim=16, num_local_experts=4, num_experts_per_tok=2,
                                                         max_position_embeddings=131072, **SLIDING), "eager", "rotary"),
    # learned absolute positions (n_positions = 256): supported within the table
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=64, n_layer=2, n_head=4, n_positions=256, vocab_size=128,
                                                   bos_token_id=1, eos_token_id=2), "sdpa", "learned absolute"),
    # learned absolute positions with an offset of 2 in the table
    "opt": ("OPTConfig", "OPTForCausalLM", dict(ffn_dim=128, word_embed_proj_dim=64, num_key_value_heads=DROP,
                                                intermediate_size=DROP), "sdpa", "learned absolute"),
}
SLIDING_FAMILIES = ["qwen2", "gemma2", "gemma3_text", "cohere2", "olmo3", "smollm3", "gpt_oss", "llama4_text"]
GLOBAL_LAYERS = {"qwen2": [0], "smollm3": [0]}  # the other sliding families: layer 1
MEM, SEG = 16, 8


def _classes(family: str):
    config_name, model_name = FAMILIES[family][:2]
    if not hasattr(transformers, config_name) or not hasattr(transformers, model_name):
        pytest.skip(f"transformers {transformers.__version__} has no {model_name}")
    return getattr(transformers, config_name), getattr(transformers, model_name)


def make_model(family: str, seed: int = 0, **overrides):
    config_cls, model_cls = _classes(family)
    _, _, extra, attn, _ = FAMILIES[family]
    kwargs = dict(extra) if family == "gpt2" else {**TINY, **extra}
    kwargs = {k: v for k, v in {**kwargs, **overrides}.items() if v is not DROP}
    return build_model(config_cls(**kwargs), attn_implementation=attn, seed=seed, cls=model_cls)


def _ids(length: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 128, (batch, length), generator=torch.Generator().manual_seed(seed))


def _config(**overrides) -> LoCoCoConfig:
    return LoCoCoConfig(**{**dict(mem_size=MEM, segment_size=SEG, kernel_size=3, buffer=4), **overrides})


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_capability_check_reads_each_family(family):
    model = make_model(family)
    layout = attention_layout(model)
    config = model.config
    assert layout.model_type == config.model_type == family
    assert layout.num_layers == 2 and len(layout.attention_modules) == 2
    assert layout.head_dim == 16
    assert layout.positions == FAMILIES[family][4]
    assert layout.max_positions == {"gpt2": 256, "opt": 512}.get(family)
    assert layout.num_heads == 4
    assert layout.num_kv_heads == {"gemma3_text": 1, "gpt_neox": 4, "gpt2": 4, "phi": 4, "opt": 4}.get(family, 2)
    expected = [type(layer).__name__ for layer in DynamicCache(config=config).layers]
    kinds = ["DynamicSlidingWindowLayer" if k != "full_attention" else "DynamicLayer" for k in layout.layer_types]
    assert kinds == expected  # the same layer kinds as transformers' own cache
    assert layout.compressed_layers == GLOBAL_LAYERS.get(family, [1] if family in SLIDING_FAMILIES else [0, 1])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_tokens_within_the_budget_give_the_plain_model_logits(family):
    model = make_model(family)
    ids = _ids(24)  # longer than the sliding windows (8), shorter than the memory (32)
    with torch.no_grad():
        ref = model(ids).logits
        for policy in ("tova", "lococo"):
            if policy == "lococo":
                lococo.attach(model, _config(mem_size=32))
            cache = lococo.make_cache(model, policy, **({"mem_size": 32} if policy == "tova" else {}))
            out = model(ids, past_key_values=cache, use_cache=True).logits
            assert torch.equal(out, ref), f"{family} {policy}: {(out - ref).abs().max()}"
    chunked = lococo.prefill(model, ids, segment_size=SEG)  # fresh LoCoCo heads, three segments
    assert torch.allclose(chunked.logits, ref[:, -1], atol=1e-5, rtol=1e-4)
    assert all(layer.compressions == 0 for layer in chunked.cache.compressed_layers)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_budget_holds_through_prefill_and_generate(family):
    model = make_model(family)
    lococo.attach(model, _config())
    ids = _ids(100)
    cache = lococo.prefill(model, ids, segment_size=SEG).cache
    layers = cache.compressed_layers
    assert [i for i, layer in enumerate(cache.layers) if isinstance(layer, CompressedLayer)] == \
        attention_layout(model).compressed_layers
    assert all(layer.compressions > 5 for layer in layers)
    assert all(layer.stored <= MEM + 4 + SEG for layer in layers)
    # every compressed layer received scores: its attention called cache.update and went through lococo's function
    assert all(layer.scores is not None for layer in layers)
    out = lococo.generate(model, ids, cache=lococo.make_cache(model), segment_size=SEG, max_new_tokens=6, min_new_tokens=6,
                          do_sample=False)
    assert out.shape == (1, 106)
    tova = lococo.make_cache(model, "tova", mem_size=MEM, buffer=4)
    out = model.generate(ids, past_key_values=tova, prefill_chunk_size=SEG, max_new_tokens=6, min_new_tokens=6,
                         do_sample=False)
    assert out.shape == (1, 106) and tova.get_seq_length() == 105
    assert all(0 < layer.stored <= MEM + 4 + 1 for layer in tova.compressed_layers)
    assert all(layer.compressions > 5 for layer in tova.compressed_layers)


@pytest.mark.parametrize("family", SLIDING_FAMILIES)
def test_sliding_window_layers_keep_their_own_window(family):
    model = make_model(family)
    cache = lococo.prefill(model, _ids(60), segment_size=SEG, policy=lococo.make_policy("tova", mem_size=MEM)).cache
    own = DynamicCache(config=model.config)
    for i, layer in enumerate(cache.layers):
        if isinstance(own.layers[i], DynamicSlidingWindowLayer):
            assert type(layer) is DynamicSlidingWindowLayer
            assert layer.sliding_window == own.layers[i].sliding_window == 8
            assert layer.keys.shape[-2] == 8 - 1  # transformers keeps window - 1 tokens between forwards
        else:
            assert isinstance(layer, CompressedLayer) and layer.compressions > 0


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_heads_of_one_family_are_refused_on_another(family, tmp_path):
    names = sorted(FAMILIES)
    other = names[(names.index(family) + 1) % len(names)]
    model = make_model(family)
    lococo.attach(model, _config())
    folder = lococo.save_heads(model, tmp_path / family)
    lococo.load_heads(make_model(family, seed=1), folder)  # the same family takes them
    with pytest.raises(IncompatibleModelError, match="another architecture.*model_type"):
        lococo.load_heads(make_model(other), folder)


@pytest.mark.parametrize("family", ["gemma2", "gpt_oss"])
def test_scores_and_fused_attention_follow_softcap_and_sinks(family):
    """Gemma 2 soft-caps its logits, GPT-OSS adds a sink per head: lococo's own pass (output and scores from one
    softmax) must equal the model's eager attention, which is what its wrapper calls otherwise."""
    from lococo.attention import _eager_of, attention_with_scores, column_scores

    model = make_model(family)
    module = attention_layout(model).attention_modules[1]  # the global layer
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 5, 16, generator=gen) * 8  # large logits: the soft cap matters
    k, v = torch.randn(2, 2, 12, 16, generator=gen), torch.randn(2, 2, 12, 16, generator=gen)
    visible = (torch.arange(12)[None, :] <= torch.arange(5)[:, None] + 7)[None].expand(2, 5, 12)
    mask = torch.where(visible, 0.0, torch.finfo(torch.float32).min)[:, None]
    softcap, sinks = getattr(module.config, "attn_logit_softcapping", None), getattr(module, "sinks", None)
    assert (softcap is not None) == (family == "gemma2") and (sinks is not None) == (family == "gpt_oss")
    if sinks is not None:
        sinks.data = torch.randn(4, generator=gen) * 3
    out, weights = _eager_of(module)(module, q, k, v, mask, dropout=0.0, scaling=module.scaling, softcap=softcap,
                                     s_aux=sinks)
    expected = weights.reshape(2, 2, 2, 5, 12).sum(dim=(2, 3))
    fused, scores = attention_with_scores(q, k, v, module.scaling, visible, None, softcap, sinks)
    assert torch.allclose(fused, out, atol=1e-5) and torch.allclose(scores, expected, atol=1e-5)
    assert torch.allclose(column_scores(q, k, module.scaling, visible, None, 0, softcap, sinks), expected, atol=1e-5)


@pytest.mark.parametrize("family", ["gemma3_text", "gpt_neox"])
def test_left_padded_batch_equals_each_row_alone(family):
    model = make_model(family)
    lococo.attach(model, _config())
    long, short = _ids(60, seed=1), _ids(40, seed=2)
    ids = torch.cat([long, torch.cat([torch.zeros(1, 20, dtype=torch.long), short], dim=1)])
    mask = torch.ones_like(ids)
    mask[1, :20] = 0
    batch = lococo.prefill(model, ids, mask, segment_size=SEG).logits
    for row, alone in enumerate((long, short)):
        single = lococo.prefill(model, alone, segment_size=SEG).logits
        assert torch.allclose(batch[row], single[0], atol=1e-5, rtol=1e-4), f"row {row}"


@pytest.mark.parametrize("family", ["gpt2", "opt"])
def test_learned_positions_are_refused_past_their_table(family):
    model = make_model(family, **({"n_positions": 64} if family == "gpt2" else {"max_position_embeddings": 64}))
    lococo.attach(model, _config())
    out = lococo.prefill(model, _ids(64), segment_size=SEG)  # the whole table: fine
    assert out.cache.stored_length() <= MEM + 4 + SEG
    with pytest.raises(IncompatibleModelError, match="learned absolute position embeddings for 64 positions.*cannot lift"):
        lococo.prefill(model, _ids(80), segment_size=SEG)
    with pytest.raises(IncompatibleModelError, match="64 positions"):
        lococo.generate(model, _ids(60), segment_size=SEG, max_new_tokens=10, do_sample=False)


# --------------------------------------------------------------------------------------------------
# Families lococo runs with some policies only: each allowed (family, policy) pair is checked as above, every other
# policy is refused with the reason and the list of the policies that do work.

NO_SCORES = ("full", "meanpool", "random", "streaming", "window")  # the full policy and those that need no scores
ALIBI_MASK = "ALiBi position biases, which transformers builds from the 2-D attention mask"
NOT_INTERFACE = "does not dispatch through transformers' AttentionInterface"

# family: ((config class, model class), config, attention implementation, positions, policies that work,
#          the reason the others are refused)
PARTIAL = {
    # ALiBi built from the 2-D mask (one column per token seen): nothing compressed
    "bloom": (("BloomConfig", "BloomForCausalLM"), dict(vocab_size=128, hidden_size=64, n_layer=2, n_head=4), "eager",
              "alibi", ("full",), ALIBI_MASK),
    "falcon_alibi": (("FalconConfig", "FalconForCausalLM"),
                     dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, alibi=True),
                     "eager", "alibi", ("full",), ALIBI_MASK),
    # ALiBi counted back from the newest key slot: exact for a window of the most recent tokens (use_cache is False
    # in MptConfig's defaults, so generate would re-read everything)
    "mpt": (("MptConfig", "MptForCausalLM"), dict(vocab_size=128, d_model=64, n_layers=2, n_heads=4, max_seq_len=256,
                                                 use_cache=True),
            "eager", "alibi", ("full", "window"), "ALiBi position biases counted back from the newest key slot"),
    # attention written without transformers' AttentionInterface: no scores
    "falcon": (("FalconConfig", "FalconForCausalLM"),
               dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, alibi=False), "sdpa",
               "rotary", NO_SCORES, NOT_INTERFACE),
    # rotary from a precomputed table of n_positions: guarded past it, as learned absolute positions
    "gptj": (("GPTJConfig", "GPTJForCausalLM"), dict(vocab_size=128, n_embd=64, n_layer=2, n_head=4, rotary_dim=8,
                                                     n_positions=256, bos_token_id=1, eos_token_id=2),
             "eager", "partial rotary", NO_SCORES, NOT_INTERFACE),
    # multi-head latent attention: the cache holds the latents (keys of width kv_lora_rank, values the rotated part)
    "deepseek_v3": (("DeepseekV3Config", "DeepseekV3ForCausalLM"),
                    dict(TINY, num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=None, qk_nope_head_dim=16,
                         qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=4, num_experts_per_tok=2,
                         moe_intermediate_size=32, first_k_dense_replace=2, n_group=1, topk_group=1),
                    "sdpa", "rotary", NO_SCORES, "multi-head latent attention"),
    # hybrid state-space + attention: layer 0 Mamba (transformers' own state layer), layer 1 attention (compressed)
    "jamba": (("JambaConfig", "JambaForCausalLM"),
              dict(TINY, num_experts=1, attn_layer_period=2, attn_layer_offset=1, mamba_d_state=4, mamba_dt_rank=4),
              "sdpa", "none", NO_SCORES, "hybrid model: layers of kind 'linear_attention' \\(layers \\[0\\]\\)"),
    # hybrid linear attention (Gated DeltaNet) + attention
    "qwen3_next": (("Qwen3NextConfig", "Qwen3NextForCausalLM"),
                   dict(TINY, head_dim=16, num_experts=2, num_experts_per_tok=1, moe_intermediate_size=32,
                        shared_expert_intermediate_size=32, layer_types=["linear_attention", "full_attention"]),
                   "sdpa", "partial rotary", NO_SCORES, "hybrid model: layers of kind 'linear_attention'"),
    # every layer slides: nothing global to compress (sliding_window=None makes it a full-attention model)
    "mistral_all_sliding": (("MistralConfig", "MistralForCausalLM"), dict(TINY, sliding_window=64), "sdpa", "rotary",
                            ("full",), "every attention layer uses sliding-window attention.*sliding_window=None"),
}


def partial_model(name: str, **overrides):
    (config_name, model_name), kwargs, attn = PARTIAL[name][:3]
    if not hasattr(transformers, config_name) or not hasattr(transformers, model_name):
        pytest.skip(f"transformers {transformers.__version__} has no {model_name}")
    config = getattr(transformers, config_name)(**{**kwargs, **overrides})
    return build_model(config, attn_implementation=attn, cls=getattr(transformers, model_name))


def _policy(name: str, mem_size: int = MEM, buffer: int = 4):
    return lococo.make_policy(name, **({} if name == "full" else dict(mem_size=mem_size, buffer=buffer)))


@pytest.mark.parametrize("name", sorted(PARTIAL))
def test_partial_families_run_the_policies_they_can_and_refuse_the_rest_with_the_reason(name):
    model = partial_model(name)
    *_, positions, works, reason = PARTIAL[name]
    layout = attention_layout(model, needs="cache")
    assert layout.positions == positions
    listed = f"The policies that work on this model: {', '.join(works)}$"
    for policy in lococo.policy_names():
        if policy in works:
            assert isinstance(lococo.make_cache(model, policy), lococo.CompressedCache)
            continue
        call = (lambda: lococo.attach(model)) if policy == "lococo" else (lambda p=policy: lococo.make_cache(model, p))
        with pytest.raises(IncompatibleModelError, match=f"{reason}.*{listed}"):
            call()


@pytest.mark.parametrize("name", sorted(PARTIAL))
def test_partial_families_within_the_budget_give_the_plain_model_logits(name):
    model = partial_model(name)
    ids = _ids(24)
    with torch.no_grad():
        ref = model(ids).logits
        for policy in PARTIAL[name][4]:
            out = model(ids, past_key_values=lococo.make_cache(model, _policy(policy, mem_size=32)), use_cache=True)
            assert torch.equal(out.logits, ref), f"{name} {policy}: {(out.logits - ref).abs().max()}"
    chunked = lococo.prefill(model, ids, segment_size=SEG, policy=_policy(PARTIAL[name][4][-1], mem_size=32))
    assert torch.allclose(chunked.logits, ref[:, -1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(PARTIAL))
def test_partial_families_keep_the_budget_through_prefill_and_generate(name):
    model = partial_model(name)
    works = PARTIAL[name][4]
    ids = _ids(100)
    compressing = [p for p in works if p != "full"]
    for policy in compressing:
        cache = lococo.prefill(model, ids, segment_size=SEG, policy=_policy(policy)).cache
        assert cache.compressed_layers and all(layer.compressions > 5 for layer in cache.compressed_layers), policy
        assert all(layer.stored <= MEM + 4 + SEG for layer in cache.compressed_layers), policy
    policy = compressing[0] if compressing else "full"
    out = lococo.generate(model, ids, policy=_policy(policy), segment_size=SEG, max_new_tokens=6, min_new_tokens=6,
                          do_sample=False)
    assert out.shape == (1, 106)
    cache = lococo.make_cache(model, _policy(policy))
    out = model.generate(ids, past_key_values=cache, prefill_chunk_size=SEG, max_new_tokens=6, min_new_tokens=6,
                         do_sample=False, use_cache=True)
    assert out.shape == (1, 106) and cache.get_seq_length() == 105
    bound = 105 if policy == "full" else MEM + 4 + 1
    assert all(0 < layer.stored <= bound for layer in cache.compressed_layers)
    own = DynamicCache(config=model.config)  # every other layer: the layer transformers itself gives it
    assert [type(layer) for layer in cache.layers if not isinstance(layer, CompressedLayer)] == \
        [type(layer) for i, layer in enumerate(own.layers) if i not in attention_layout(model, "cache").compressed_layers]


def test_mpt_window_is_exactly_a_sliding_window():
    """MPT's ALiBi biases count back from the newest key slot: with the most recent M tokens kept in order, each query
    sees the plain model's attention restricted to itself and the M tokens before it."""
    model = partial_model("mpt")
    ids = _ids(60)
    rows, cols = torch.arange(60)[:, None], torch.arange(60)[None]
    mask = torch.where((cols <= rows) & (cols >= rows - 12), 0.0, torch.finfo(torch.float32).min)[None, None]
    cache = lococo.make_cache(model, "window", mem_size=12, buffer=0)
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).logits
        out = torch.cat([model(ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits for t in range(60)], 1)
    assert torch.allclose(out, ref, atol=1e-5) and not torch.allclose(out, model(ids).logits, atol=1e-2)
    assert [layer.stored for layer in cache.compressed_layers] == [13, 13]


def _left_padded():
    long, short = _ids(60, seed=1), _ids(40, seed=2)
    ids = torch.cat([long, torch.cat([torch.zeros(1, 20, dtype=torch.long), short], dim=1)])
    mask = torch.ones_like(ids)
    mask[1, :20] = 0
    return ids, mask, (long, short)


@pytest.mark.parametrize("name", ["deepseek_v3", "jamba", "falcon"])
def test_left_padded_batches_on_partial_families(name):
    """Where lococo's attention function masks the padding slots (DeepSeek-V3, Jamba), a left-padded batch equals
    each row alone; where the attention bypasses it (Falcon), only the full policy takes one."""
    model = partial_model(name)
    ids, mask, rows = _left_padded()
    for policy in ("full", "meanpool"):
        if name == "falcon" and policy != "full":
            with pytest.raises(IncompatibleModelError, match="left-padded batch through the meanpool policy"):
                lococo.prefill(model, ids, mask, segment_size=SEG, policy=_policy(policy))
            continue
        batch = lococo.prefill(model, ids, mask, segment_size=SEG, policy=_policy(policy)).logits
        for row, alone in enumerate(rows):
            single = lococo.prefill(model, alone, segment_size=SEG, policy=_policy(policy)).logits
            assert torch.allclose(batch[row], single[0], atol=1e-5, rtol=1e-4), f"{policy} row {row}"


def test_gptj_rotary_table_is_guarded_past_its_size():
    model = partial_model("gptj", n_positions=64)
    assert attention_layout(model, "cache").max_positions == 64
    lococo.prefill(model, _ids(64), segment_size=SEG, policy=_policy("window"))  # the whole table: fine
    with pytest.raises(IncompatibleModelError, match="a rotary table for 64 positions"):
        lococo.prefill(model, _ids(80), segment_size=SEG, policy=_policy("window"))


def test_streaming_reindexing_is_refused_where_stored_keys_are_not_fully_rotated():
    """Re-indexing re-rotates the stored keys: wrong for DeepSeek-V3 (its rotated part is cached as the "values"
    latent), for partial rotary keys and for NoPE layers (Llama 4's global layers)."""
    model = partial_model("deepseek_v3")
    lococo.make_cache(model, "streaming", mem_size=MEM)
    with pytest.raises(IncompatibleModelError, match="reindex_positions re-rotates.*latent"):
        lococo.make_cache(model, "streaming", mem_size=MEM, reindex_positions=True)
    for family, why in (("stablelm", "partial rotary"), ("llama4_text", "NoPE layers \\[1\\]")):
        with pytest.raises(IncompatibleModelError, match=f"reindex_positions re-rotates.*{why}"):
            lococo.make_cache(make_model(family), "streaming", mem_size=MEM, reindex_positions=True)
    lococo.make_cache(make_model("llama"), "streaming", mem_size=MEM, reindex_positions=True)


def test_hybrid_caches_count_the_state_layers():
    model = partial_model("jamba")
    cache = lococo.prefill(model, _ids(40), segment_size=SEG, policy=_policy("window")).cache
    state = cache.layers[0]
    assert type(state) is type(DynamicCache(config=model.config).layers[0]) and not isinstance(state, CompressedLayer)
    states = [t for t in (*state.conv_states.values(), *state.recurrent_states.values()) if t is not None]
    attention = cache.layers[1].keys.numel() * 4 + cache.layers[1].values.numel() * 4
    assert states and cache.cache_bytes() == attention + sum(t.numel() * t.element_size() for t in states)


def test_the_readme_tables_are_this_matrix():
    """README "Supported models": one row per family tested here, with the policies that work on it."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Supported models", 1)[1].split("\n## ", 1)[0]
    every, some = section.split("Some policies only", 1)

    def rows(text: str) -> list[list[str]]:
        return [line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]

    def model_types(cell: str) -> set[str]:
        return set(re.findall(r"\(`([a-z0-9_]+)`", cell))

    assert {name for row in rows(every) for name in model_types(row[0])} == set(FAMILIES)
    table = [(model_types(row[0]), set(re.findall(r"`([a-z0-9-]+)`", row[1]))) for row in rows(some)]
    for name, (classes, *_, works, _) in PARTIAL.items():
        model_type = getattr(transformers, classes[0]).model_type
        assert any(model_type in types and set(works) == listed for types, listed in table), name
    assert {name for types, _ in table for name in types} == {getattr(transformers, c[0]).model_type
                                                               for c, *_ in PARTIAL.values()}


def test_eval_grids_check_every_policy_before_the_first_cell(capsys):
    from lococo.evaluation.cli import _runnable

    model = partial_model("bloom")  # ALiBi: only the full cache
    assert _runnable(["full", "window", "tova"], model, explicit=False) == ["full"]
    assert "skipping window" in capsys.readouterr().err
    with pytest.raises(IncompatibleModelError, match="tova"):
        _runnable(["full", "tova"], model, explicit=True)


REINDEX_REFUSED = {"llama4_text": "NoPE layers"}  # its global layer has no rotary embedding


@pytest.mark.parametrize("family", FAMILIES)
def test_reindexed_positions_follow_each_familys_own_rotary(family):
    """``reindex_positions`` moves stored keys with the family's own rotary embedding and application (Cohere's
    interleaved pairs, Gemma 3's per-layer-type RoPE, GPT-OSS's YaRN scaling): a key rotated to position p and
    moved by d equals the key rotated to p + d; families without full rotary keys are refused with the reason."""
    model = make_model(family)
    expected_refusal = REINDEX_REFUSED.get(family) or (FAMILIES[family][4] != "rotary" and FAMILIES[family][4])
    if expected_refusal:
        with pytest.raises(IncompatibleModelError, match=f"reindex_positions.*{expected_refusal}"):
            lococo.make_cache(model, "tova", mem_size=MEM, reindex_positions=True)
        return
    cache = lococo.make_cache(model, "tova", mem_size=MEM, buffer=4, reindex_positions=True)
    rotation = cache.compressed_layers[0].rotation
    layout = attention_layout(model)
    raw = torch.randn(1, layout.num_kv_heads, 6, layout.head_dim)

    def at(positions):
        flat = raw.reshape(layout.num_kv_heads, 1, 6, -1)
        pos = torch.as_tensor(positions).expand(layout.num_kv_heads, 6)
        cos, sin = rotation.rotary(flat, pos, **rotation.kwargs)
        return rotation.apply(flat, flat, cos, sin)[1].reshape(raw.shape)

    before, after = [3, 7, 100, 900, 20, 0], [0, 9, 60, 12, 2020, 5]
    shift = (torch.tensor(after) - torch.tensor(before)).expand(1, layout.num_kv_heads, 6)
    assert torch.allclose(rotation(at(before), shift), at(after), atol=1e-4)
    out = lococo.prefill(model, _ids(60), segment_size=SEG, cache=cache)
    assert torch.isfinite(out.logits).all() and cache.stored_length() <= MEM + SEG + 4
