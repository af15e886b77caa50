"""Score collection under every attention implementation and the masks each one receives.

flash attention cannot run on CPU, so its contract is simulated: transformers' own flash mask function
produces the masks (None or 2-D padding masks) and a stand-in kernel honours them exactly as flash does
(causal bottom-right, padding by unpadding, zeros for padding queries). On a GPU the same tests run with
the real kernel (``LOCOCO_REAL_FLASH=1``).
"""

import os

import pytest
import torch
import torch.nn.functional as F
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

import lococo
from conftest import build_model, tiny_llama_config
from lococo import IncompatibleModelError, LoCoCoConfig
from lococo.attention import wrapper_name

REAL_FLASH = os.environ.get("LOCOCO_REAL_FLASH") == "1"


def _flash_like(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """flash attention's contract on CPU: None or a 2-D padding mask, causality implicit (bottom-right)."""
    assert module.config._attn_implementation == "flash_attention_2"  # how flash picks its kernel
    assert attention_mask is None or attention_mask.dim() == 2, "flash receives None or [batch, kv]"
    b, h, q, _ = query.shape
    kv = key.shape[2]
    visible = torch.ones(q, kv, dtype=torch.bool).tril(kv - q).expand(b, q, kv)
    query_valid = torch.ones(b, q, dtype=torch.bool)
    if attention_mask is not None:
        real = attention_mask.to(torch.bool)
        assert real.shape == (b, kv)
        visible = visible & real[:, None, :]
        query_valid = real[:, -q:]
    visible = visible | ~query_valid[:, :, None]  # padding queries: any finite row, zeroed below
    groups = h // key.shape[1]
    out = F.scaled_dot_product_attention(query, key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1),
                                         attn_mask=visible[:, None], scale=scaling)
    out = out * query_valid[:, None, :, None]
    return out.transpose(1, 2).contiguous(), None


def _flash_model(monkeypatch):
    """A tiny Llama set to flash_attention_2 (the stand-in kernel on CPU, the real one on a GPU)."""
    if REAL_FLASH:
        return build_model(tiny_llama_config(), attn_implementation="flash_attention_2").to("cuda", torch.bfloat16)
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "flash_attention_2", _flash_like)
    model = build_model(tiny_llama_config())
    model.config._attn_implementation = "flash_attention_2"
    return model


@pytest.fixture
def flash_model(monkeypatch):
    return _flash_model(monkeypatch)


@pytest.fixture(params=["sdpa", "eager", "flash_attention_2"])
def any_attention_model(request, monkeypatch):
    """The tiny Llama under each attention implementation (4-D bool, 4-D additive, None / 2-D masks)."""
    if request.param == "flash_attention_2":
        return _flash_model(monkeypatch)
    return build_model(tiny_llama_config(), attn_implementation=request.param)


def _left_padded(rows):
    width = max(r.shape[1] for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - row.shape[1] :] = row[0]
        mask[i, width - row.shape[1] :] = 1
    return ids, mask


def _attach(model):
    lococo.attach(model, LoCoCoConfig(mem_size=16, segment_size=8, buffer=4, kernel_size=3, head_dtype="auto"))
    for p in model.lococo.parameters():
        torch.nn.init.normal_(p, std=0.05)  # non-trivial heads
    return model


def test_wrapper_names_are_never_taken_for_flash_kernels():
    assert wrapper_name("flash_attention_2") == "lococo_fa2"
    assert wrapper_name("sdpa") == "lococo_sdpa"
    for base in ("flash_attention_2", "flash_attention_3", "kernels-community/flash-attn3", "sdpa", "eager"):
        assert "flash" not in wrapper_name(base) and "/" not in wrapper_name(base)


@pytest.mark.parametrize("policy", ["lococo", "tova", "snapkv", "h2o"])
def test_left_padded_batch_gives_each_row_its_own_slots_scores_and_logits(any_attention_model, policy):
    model = _attach(any_attention_model)
    device = next(model.parameters()).device
    rows = [torch.randint(0, 128, (1, n)) for n in (70, 43)]
    ids, mask = _left_padded(rows)
    kw = {} if policy == "lococo" else dict(mem_size=16, buffer=4)
    batched = lococo.prefill(model, ids.to(device), mask.to(device), cache=lococo.make_cache(model, policy, **kw),
                             segment_size=8)
    assert model.config._attn_implementation.startswith("lococo_")
    tol = 3e-2 if REAL_FLASH else 1e-4
    for i, row in enumerate(rows):
        alone = lococo.prefill(model, row.to(device), cache=lococo.make_cache(model, policy, **kw), segment_size=8)
        torch.testing.assert_close(batched.logits[i].float(), alone.logits[0].float(), atol=tol, rtol=tol)
        for lb, la in zip(batched.cache.compressed_layers, alone.cache.compressed_layers, strict=True):
            n = la.stored
            torch.testing.assert_close(lb.keys[i, :, -n:].float(), la.keys[0].float(), atol=tol, rtol=tol)
            torch.testing.assert_close(lb.scores[i, :, -n:], la.scores[0], atol=tol, rtol=tol)


def test_flash_batch_one_matches_sdpa():
    sdpa = _attach(build_model(tiny_llama_config()))
    flash = build_model(tiny_llama_config())  # its own config: the implementation is set on the config
    flash.config._attn_implementation = "flash_attention_2"
    lococo.attach(flash, sdpa.lococo.config)
    flash.lococo.load_state_dict(sdpa.lococo.state_dict())
    ids = torch.randint(0, 128, (1, 90))
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "flash_attention_2", _flash_like)
        out_flash = lococo.prefill(flash, ids, segment_size=8)
    out_sdpa = lococo.prefill(sdpa, ids, segment_size=8)
    assert out_sdpa.cache.compressed_layers[0].compressions > 0
    torch.testing.assert_close(out_flash.logits, out_sdpa.logits, atol=1e-4, rtol=1e-4)


def test_flash_batched_generate_equals_each_row_alone(flash_model):
    model = _attach(flash_model)
    device = next(model.parameters()).device
    rows = [torch.randint(1, 128, (1, n)) for n in (50, 31)]
    ids, mask = _left_padded(rows)
    kw = dict(max_new_tokens=30, do_sample=False, pad_token_id=0)
    batched = lococo.generate(model, ids.to(device), mask.to(device), segment_size=8, **kw)[:, ids.shape[1] :]
    for i, row in enumerate(rows):
        alone = lococo.generate(model, row.to(device), segment_size=8, **kw)[:, row.shape[1] :]
        assert torch.equal(batched[i], alone[0]), i


def test_flex_attention_is_refused_with_what_is_supported(tiny_llama):
    tiny_llama.config._attn_implementation = "flex_attention"
    with pytest.raises(IncompatibleModelError, match="flex_attention.*supported: eager, sdpa and flash"):
        lococo.make_cache(tiny_llama, "tova", mem_size=16)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_scoring_left_on_is_harmless_without_a_lococo_cache(attn):
    """make_cache switches the model to the scoring wrapper; with any other cache, or none, nothing changes."""
    plain = build_model(tiny_llama_config(), attn_implementation=attn)
    scored = build_model(tiny_llama_config(), attn_implementation=attn)
    lococo.make_cache(scored, "tova", mem_size=16)
    assert scored.config._attn_implementation == wrapper_name(attn)
    ids = torch.randint(0, 128, (2, 30))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    with torch.no_grad():
        torch.testing.assert_close(scored(ids, attention_mask=mask).logits, plain(ids, attention_mask=mask).logits,
                                   rtol=0, atol=0)
        kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, prefill_chunk_size=None)
        assert torch.equal(scored.generate(ids, attention_mask=mask, **kw), plain.generate(ids, attention_mask=mask, **kw))
    lococo.disable_scoring(scored)
    assert scored.config._attn_implementation == attn


@pytest.mark.parametrize("policy", ["lococo", "h2o"])
def test_score_pass_skipping_later_keys_changes_nothing(any_attention_model, policy, monkeypatch):
    """Blocks of 3 queries in segments of 8: with causal masks each block skips the keys after it, and logits,
    slots and scores equal those of the same blocks reading every key; a left-padded batch included."""
    import lococo.attention as attention

    model = _attach(any_attention_model)
    device = next(model.parameters()).device
    ids, mask = _left_padded([torch.randint(0, 128, (1, n)) for n in (70, 43)])
    kw = {} if policy == "lococo" else dict(mem_size=16, buffer=4)
    monkeypatch.setattr(attention, "_QUERY_BLOCK", 3)
    is_causal = attention._is_causal
    runs = []
    for skip in (True, False):
        monkeypatch.setattr(attention, "_is_causal", is_causal if skip else lambda mask, q_len: False)
        out = lococo.prefill(model, ids.to(device), mask.to(device), cache=lococo.make_cache(model, policy, **kw),
                             segment_size=8)
        assert all(layer.causal_queries == skip for layer in out.cache.compressed_layers)
        runs.append(out)
    skipped, whole = runs
    tol = 3e-2 if REAL_FLASH else 1e-6
    torch.testing.assert_close(skipped.logits, whole.logits, atol=tol, rtol=tol)
    for a, b in zip(skipped.cache.compressed_layers, whole.cache.compressed_layers, strict=True):
        torch.testing.assert_close(a.keys, b.keys, atol=tol, rtol=tol)
        torch.testing.assert_close(a.scores, b.scores, atol=tol, rtol=tol)


def test_is_causal_reads_the_mask_each_implementation_receives(monkeypatch):
    import lococo.attention as attention

    monkeypatch.setattr(attention, "_QUERY_BLOCK", 2)
    q, stored = 5, 4
    causal = torch.ones(q, stored + q, dtype=torch.bool).tril(stored)[None, None]
    assert attention._is_causal(None, q) and attention._is_causal(torch.ones(1, stored + q), q)
    assert attention._is_causal(causal, q)
    assert attention._is_causal(torch.where(causal, 0.0, torch.finfo(torch.float32).min), q)  # eager's additive
    peeking = causal.clone()
    peeking[..., 1, stored + 3] = True  # token 1 sees token 3: a bidirectional span
    assert not attention._is_causal(peeking, q)
    assert not attention._is_causal(torch.where(peeking, 0.0, torch.finfo(torch.float32).min), q)
    assert not attention._is_causal(causal[..., :2, :], 2)  # one block: nothing to skip, the mask is not read


@pytest.mark.filterwarnings("ignore:.*flex_attention.*:UserWarning")
@pytest.mark.parametrize("softcap", [None, 5.0])
@pytest.mark.parametrize("window", [0, 3])
def test_flex_scores_equal_the_blockwise_reference(softcap, window):
    """Two flex_attention passes (the GPU path, unfused on CPU) give the blockwise column sums and the output,
    with GQA, invalid stored slots, padding queries and soft-capping."""
    from lococo.attention import _visible_from_mask, attention_with_scores, column_scores
    from lococo.flex_scores import flex_attention_with_scores, flex_column_scores

    torch.manual_seed(0)
    b, n_heads, kv_heads, q, length, d = 2, 6, 2, 12, 30, 16
    query, key, value = torch.randn(b, n_heads, q, d), torch.randn(b, kv_heads, length, d), torch.randn(b, kv_heads, length, d)
    visible = _visible_from_mask(None, b, q, length, "cpu").clone()
    visible[1, :, :5] = False  # stored slots that are padding
    query_valid = torch.ones(b, q, dtype=torch.bool)
    query_valid[1, :2] = False  # padding queries, which see themselves only
    visible[1, :2] = False
    visible[1, [0, 1], [length - q, length - q + 1]] = True
    scale = d**-0.5
    ref = column_scores(query, key, scale, visible, query_valid, window, softcap)
    torch.testing.assert_close(flex_column_scores(query, key, scale, visible, query_valid, window, softcap), ref)
    if not window:
        out_ref, scores_ref = attention_with_scores(query, key, value, scale, visible, query_valid, softcap)
        out, scores = flex_attention_with_scores(query, key, value, scale, visible, query_valid, softcap)
        torch.testing.assert_close(out, out_ref)
        torch.testing.assert_close(scores, scores_ref)


@pytest.mark.filterwarnings("ignore:.*flex_attention.*:UserWarning")
@pytest.mark.parametrize("policy", ["lococo", "snapkv"])
def test_flex_score_kernel_keeps_what_the_blockwise_one_keeps(tiny_llama, policy, monkeypatch):
    import lococo.flex_scores as flex_scores

    calls = []
    run = flex_scores._run
    monkeypatch.setattr(flex_scores, "_run", lambda *args, **kwargs: calls.append(1) or run(*args, **kwargs))
    model = _attach(tiny_llama)
    ids, mask = _left_padded([torch.randint(0, 128, (1, n)) for n in (70, 43)])
    kw = {} if policy == "lococo" else dict(mem_size=16, buffer=4)
    runs = [lococo.prefill(model, ids, mask, cache=lococo.make_cache(model, policy, score_kernel=kernel, **kw),
                           segment_size=8) for kernel in ("blockwise", "flex")]
    assert calls  # the flex passes ran
    torch.testing.assert_close(runs[1].logits, runs[0].logits, atol=1e-4, rtol=1e-4)
    for a, b in zip(runs[1].cache.compressed_layers, runs[0].cache.compressed_layers, strict=True):
        torch.testing.assert_close(a.keys, b.keys, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(a.scores, b.scores, atol=1e-4, rtol=1e-4)
    with pytest.raises(lococo.ConfigError, match="score_kernel"):
        lococo.make_cache(model, policy, score_kernel="triton", **kw)
