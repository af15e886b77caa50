"""Shared fixtures: tiny random models (milliseconds) and the offline reference model (integration)."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 2))  # OMP_NUM_THREADS=1: one thread


def tiny_llama_config(**overrides) -> LlamaConfig:
    """A 2-layer random Llama: hidden 64, 4 query heads, 2 KV heads (GQA), head_dim 16."""
    kwargs = dict(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_theta=10000.0,
        tie_word_embeddings=False,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def build_model(config, attn_implementation: str = "sdpa", seed: int = 0, cls=LlamaForCausalLM):
    torch.manual_seed(seed)
    config._attn_implementation = attn_implementation
    model = cls(config)
    model.eval()
    return model


@pytest.fixture
def tiny_llama():
    """Tiny random Llama with grouped-query attention (4 query heads, 2 KV heads)."""
    return build_model(tiny_llama_config())


@pytest.fixture
def tiny_llama_mha():
    """Tiny random Llama without GQA (4 query heads, 4 KV heads)."""
    return build_model(tiny_llama_config(num_key_value_heads=4))


@pytest.fixture(scope="session")
def reference_model():
    """The offline reference model (SmolLM2-135M-Instruct) and its tokenizer, loaded once per session."""
    from lococo.models import load_model

    model, tokenizer = load_model()
    return model, tokenizer
