"""The model matrix: tiny random models of every supported family, built from transformers' own config classes.

For each family: (a) tokens within the budget give exactly the plain model's logits (TOVA and fresh LoCoCo
heads); (b) the budget holds through chunked prefill, ``lococo.generate`` and a plain ``model.generate`` and
every compressed layer receives its scores (so the attention really calls ``cache.update`` and dispatches
through transformers' AttentionInterface); (c) sliding-window layers keep transformers' own window;
(d) heads saved on one family are refused on another. Left-padded batches are checked on two families
(tests/test_attention.py covers them in depth on Llama). Families lococo cannot drive are refused with a
message naming the reason. README "Supported models" is this table.
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
    with pytest.raises(IncompatibleModelError, match="learned absolute position embeddings for 64 positions.*#14"):
        lococo.prefill(model, _ids(80), segment_size=SEG)
    with pytest.raises(IncompatibleModelError, match="64 positions"):
        lococo.generate(model, _ids(60), segment_size=SEG, max_new_tokens=10, do_sample=False)


def _refused(config_name: str, model_name: str, attn: str = "eager", **kwargs):
    if not hasattr(transformers, config_name) or not hasattr(transformers, model_name):
        pytest.skip(f"transformers {transformers.__version__} has no {model_name}")
    config = getattr(transformers, config_name)(**kwargs)
    return build_model(config, attn_implementation=attn, cls=getattr(transformers, model_name))


REFUSED = {
    # ALiBi: biases built from the mask's key positions
    "bloom": (("BloomConfig", "BloomForCausalLM"), dict(vocab_size=128, hidden_size=64, n_layer=2, n_head=4),
              "ALiBi position biases"),
    # multi-head latent attention: values narrower than keys
    "deepseek_v3": (("DeepseekV3Config", "DeepseekV3ForCausalLM"),
                    dict(TINY, kv_lora_rank=16, q_lora_rank=None, qk_nope_head_dim=16, qk_rope_head_dim=8,
                         v_head_dim=16, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                         first_k_dense_replace=2, n_group=1, topk_group=1),
                    "multi-head latent attention"),
    # hybrid state-space + attention
    "jamba": (("JambaConfig", "JambaForCausalLM"),
              dict(TINY, num_experts=1, attn_layer_period=2, attn_layer_offset=1, mamba_d_state=4,
                   mamba_dt_rank=4, use_mamba_kernels=False),
              "recurrent, state-space and linear-attention layers"),
    # hybrid linear attention (Gated DeltaNet) + attention
    "qwen3_next": (("Qwen3NextConfig", "Qwen3NextForCausalLM"),
                   dict(TINY, head_dim=16, num_experts=2, num_experts_per_tok=1, moe_intermediate_size=32,
                        shared_expert_intermediate_size=32, layer_types=["linear_attention", "full_attention"]),
                   "'linear_attention' \\(layers \\[0\\]\\)"),
    # attention written without transformers' AttentionInterface
    "falcon": (("FalconConfig", "FalconForCausalLM"),
               dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, alibi=False),
               "does not dispatch through transformers' AttentionInterface"),
    "gptj": (("GPTJConfig", "GPTJForCausalLM"), dict(vocab_size=128, n_embd=64, n_layer=2, n_head=4, rotary_dim=8,
                                                     n_positions=256, bos_token_id=1, eos_token_id=2),
             "does not dispatch through transformers' AttentionInterface"),
    "falcon_alibi": (("FalconConfig", "FalconForCausalLM"),
                     dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, alibi=True),
                     "ALiBi position biases"),
    "mpt": (("MptConfig", "MptForCausalLM"), dict(vocab_size=128, d_model=64, n_layers=2, n_heads=4, max_seq_len=256),
            "ALiBi position biases"),
    # every layer slides: nothing global to compress (sliding_window=None makes it a full-attention model)
    "mistral_all_sliding": (("MistralConfig", "MistralForCausalLM"), dict(TINY, sliding_window=64),
                            "every layer uses sliding-window attention.*sliding_window=None"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_unsupported_models_are_refused_with_the_reason(name):
    (config_name, model_name), kwargs, reason = REFUSED[name]
    model = _refused(config_name, model_name, **kwargs)
    for call in (lambda: lococo.attach(model), lambda: lococo.make_cache(model, "tova", mem_size=MEM)):
        with pytest.raises(IncompatibleModelError, match=reason):
            call()


def test_the_readme_table_is_this_matrix():
    """README "Supported models": one row per family tested here, supported or refused."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Supported models", 1)[1].split("\n## ", 1)[0]
    supported, refused = section.split("Refused, with the reason", 1)

    def model_types(text: str) -> set[str]:
        rows = [line.split("|")[1] for line in text.splitlines() if line.startswith("| ") and "---" not in line]
        return {name for row in rows for name in re.findall(r"\(`([a-z0-9_]+)`", row)} - {"model_type"}  # header

    assert model_types(supported) == set(FAMILIES)
    refused_types = {getattr(transformers, names[0]).model_type for names, _, _ in REFUSED.values()}
    assert model_types(refused) == refused_types
