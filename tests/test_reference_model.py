"""Integration: LoCoCo on the offline reference model (SmolLM2-135M-Instruct, Llama with GQA)."""

import json

import pytest
import torch

import lococo

pytestmark = pytest.mark.integration


@pytest.fixture
def model_with_heads(reference_model):
    model, tokenizer = reference_model
    lococo.attach(model, lococo.LoCoCoConfig(mem_size=128, segment_size=512))
    yield model, tokenizer
    lococo.detach(model)


def test_short_prompt_equals_the_plain_model(model_with_heads):
    model, tokenizer = model_with_heads
    ids = tokenizer("The quick brown fox jumps over the lazy dog. " * 12, return_tensors="pt").input_ids[:, :140]
    with torch.no_grad():
        ref = model(ids).logits[:, -1]
    out = lococo.prefill(model, ids, segment_size=64)
    assert torch.allclose(out.logits, ref, atol=1e-4)


def test_long_prompt_keeps_a_fixed_budget_and_generates(model_with_heads):
    from lococo.data import long_text_ids

    model, tokenizer = model_with_heads
    ids = long_text_ids(tokenizer, 1536)
    cache = lococo.make_cache(model)
    out = lococo.generate(model, ids, cache=cache, segment_size=512, max_new_tokens=8, do_sample=False,
                          pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] == 1536 + 8
    assert cache.get_seq_length() == 1536 + 7
    assert cache.stored_length() <= 128 + 16 + 1
    assert all(layer.compressions > 0 for layer in cache.compressed_layers)


@pytest.mark.parametrize("mem_size", [128, 512])
def test_shipped_heads_match_the_reference_model(reference_model, mem_size):
    model, _ = reference_model
    folder = lococo.shipped_heads(model, mem_size)
    assert folder is not None and folder.name == f"smollm2-135m-m{mem_size}"
    meta = json.loads((folder / "lococo_config.json").read_text())
    assert meta["base_model"]["name_or_path"] == "SmolLM2-135M-Instruct"  # a name, not a cache path
    heads = lococo.load_heads(model, folder)  # checks the architecture fingerprint
    try:
        assert heads.config.mem_size == mem_size
        lams = torch.stack([h.lam.detach().float() for h in heads.heads.values()])
        assert torch.isfinite(lams).all() and not torch.allclose(lams, torch.full_like(lams, 0.5))  # trained
    finally:
        lococo.detach(model)
    assert lococo.shipped_heads(model, 64) is None
