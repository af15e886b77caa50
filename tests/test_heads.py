import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import GPT2Config, GPT2LMHeadModel, MistralConfig, MistralForCausalLM

import lococo
from conftest import build_model
from lococo import IncompatibleModelError, LoCoCoConfig
from lococo.compressor.heads import ConvCompressorHead
from lococo.compressor.policy import lococo_compress


def test_attach_adds_named_parameters_and_leaves_base_untouched(tiny_llama):
    before = {k: v.clone() for k, v in tiny_llama.state_dict().items()}
    heads = lococo.attach(tiny_llama, LoCoCoConfig(mem_size=16, kernel_size=5))
    names = [n for n, _ in tiny_llama.named_parameters() if n.startswith("lococo.")]
    assert names and all(n.startswith("lococo.heads.") for n in names)
    assert {n.split(".")[2] for n in names} == {"0", "1"}
    assert all(torch.equal(tiny_llama.state_dict()[k], v) for k, v in before.items())
    for head in heads.heads.values():
        assert all(torch.count_nonzero(c.bias) == 0 for c in head.convs)


def test_detach_gives_back_the_original_model_bit_for_bit(tiny_llama):
    ids = torch.randint(0, 128, (1, 40))
    with torch.no_grad():
        ref = tiny_llama(ids).logits
    keys = set(tiny_llama.state_dict())
    lococo.attach(tiny_llama, LoCoCoConfig(mem_size=16, kernel_size=5))
    lococo.prefill(tiny_llama, ids, segment_size=8)
    lococo.detach(tiny_llama)
    lococo.disable_scoring(tiny_llama)
    assert set(tiny_llama.state_dict()) == keys
    assert tiny_llama.config._attn_implementation == "sdpa"
    with torch.no_grad():
        assert torch.equal(tiny_llama(ids).logits, ref)


def test_attach_twice_and_detach_without_heads_are_clear_errors(tiny_llama):
    with pytest.raises(IncompatibleModelError, match="no LoCoCo heads"):
        lococo.detach(tiny_llama)
    lococo.attach(tiny_llama)
    with pytest.raises(IncompatibleModelError, match="already has LoCoCo heads"):
        lococo.attach(tiny_llama)


def test_a_layer_without_a_findable_attention_module_is_refused_with_the_reason(tiny_llama):
    tiny_llama.model.layers[1].self_attn.layer_idx = None  # lococo finds each layer's cache through it
    with pytest.raises(IncompatibleModelError, match="decoder layer 1 .* no attention module whose layer_idx is 1"):
        lococo.attach(tiny_llama)


def test_gpt2_is_no_longer_refused_by_name():
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    heads = lococo.attach(model)  # learned absolute positions: supported within the table (tests/test_model_matrix.py)
    assert heads.compressed_layers == [0]


def test_sliding_window_everywhere_is_refused():
    model = build_model(
        MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, sliding_window=64),
        cls=MistralForCausalLM,
    )
    with pytest.raises(IncompatibleModelError, match="sliding_window=None"):
        lococo.attach(model)


def _head(mem=8, rho=0.5, lam=0.0, kernel=3, layers=1):
    cfg = LoCoCoConfig(mem_size=mem, hh_keep_rate=rho, lambda_init=lam, kernel_size=kernel, n_conv_layers=layers)
    torch.manual_seed(0)
    return ConvCompressorHead(head_dim=4, config=cfg), cfg


@pytest.mark.parametrize("rho", [0.0, 0.25, 0.5, 1.0])
def test_lambda_zero_is_exact_top_m_selection(rho):
    head, cfg = _head(rho=rho, lam=0.0)
    b, h, length = 2, 3, 30
    keys = torch.randn(b, h, length, 4)
    values = torch.randn(b, h, length, 4)
    scores = torch.rand(b, h, length)
    k, v, _, _ = lococo_compress(head, cfg.n_heavy, 0, keys, values, scores, None)
    assert k.shape == (b, h, cfg.mem_size, 4)
    top = scores.topk(cfg.mem_size, dim=-1).indices.sort(-1).values
    expected = keys.gather(2, top[..., None].expand(-1, -1, -1, 4))
    # same set of slots (heavy hitters first, then the fused = selected slots, each block in order)
    got = k.sort(dim=2).values
    assert torch.allclose(got, expected.sort(dim=2).values, atol=1e-6)


def test_a_head_with_lambda_exactly_zero_does_not_run_its_conv(monkeypatch):
    head, cfg = _head(rho=0.5, lam=0.0)
    keys, values, scores = torch.randn(2, 3, 30, 4), torch.randn(2, 3, 30, 4), torch.rand(2, 3, 30)
    with torch.no_grad():
        head.lam_logit.fill_(-20.0)  # lambda ~2e-9: mixes
    mixed = lococo_compress(head, cfg.n_heavy, 0, keys, values, scores, None)
    with torch.no_grad():
        head.lam_logit.fill_(float("-inf"))  # an in-place change is seen (no stale answer)

    def no_conv(*args):
        raise AssertionError("the conv ran for a head with lambda 0")

    monkeypatch.setattr(head, "mixing_logits", no_conv)
    selected = lococo_compress(head, cfg.n_heavy, 0, keys, values, scores, None)
    for a, b in zip(mixed, selected, strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)
    with torch.no_grad():
        head.lam_logit.fill_(0.0)
    with pytest.raises(AssertionError, match="the conv ran"):
        lococo_compress(head, cfg.n_heavy, 0, keys, values, scores, None)


def test_fused_slots_are_convex_mixtures_of_the_remaining_tokens():
    head, cfg = _head(rho=0.5, lam=1.0)
    keys = torch.randn(1, 1, 20, 4)
    values = torch.ones(1, 1, 20, 4)
    scores = torch.rand(1, 1, 20)
    k, v, _, _ = lococo_compress(head, cfg.n_heavy, 0, keys, values, scores, None)
    # values are all ones: a convex mixture of ones is one
    assert torch.allclose(v, torch.ones_like(v), atol=1e-6)


def test_local_window_is_always_kept():
    head, cfg = _head(mem=8, rho=0.5, lam=0.0)
    keys = torch.arange(30.0).view(1, 1, 30, 1).expand(1, 1, 30, 4).contiguous()
    scores = torch.linspace(1, 0, 30).view(1, 1, 30)  # oldest scores highest
    k, _, _, _ = lococo_compress(head, cfg.n_heavy, 2, keys, keys, scores, None)
    kept = k[0, 0, :, 0].tolist()
    assert 28.0 in kept and 29.0 in kept


@given(logit=st.floats(min_value=-1e4, max_value=1e4, allow_nan=False))
@settings(max_examples=50, deadline=None)
def test_lambda_stays_in_unit_interval_whatever_the_parameter(logit):
    head, cfg = _head(lam=0.5)
    head.lam_logit.data.fill_(logit)
    keys, values = torch.randn(1, 2, 20, 4), torch.rand(1, 2, 20, 4) + 1.0
    lam = float(head.blend_weight().detach())
    assert 0.0 <= lam <= 1.0
    # fused value slots are convex combinations: never outside the range of the values they mix
    _, v, _, _ = lococo_compress(head, cfg.n_heavy, 0, keys, values, torch.rand(1, 2, 20), None)
    assert v.min() >= values.min() - 1e-5 and v.max() <= values.max() + 1e-5


def test_lambda_gradient_survives_where_a_clamp_would_kill_it():
    head, cfg = _head(lam=0.5)
    head.lam_logit.data.fill_(-3.0)  # lambda ~ 0.047: near the edge, still learning
    keys, values = torch.randn(1, 2, 20, 4), torch.randn(1, 2, 20, 4)
    k, v, _, _ = lococo_compress(head, cfg.n_heavy, 0, keys, values, torch.rand(1, 2, 20), None)
    (k.square().sum() + v.square().sum()).backward()
    assert head.lam_logit.grad is not None and head.lam_logit.grad.abs() > 0


@pytest.mark.parametrize("init", [0.0, 0.2, 1.0])
def test_lambda_init_is_the_initial_blend(init):
    head, _ = _head(lam=init)
    assert float(head.lam.detach()) == pytest.approx(init, abs=1e-7)


@pytest.mark.parametrize("raw, expected", [(-0.7, 0.0), (0.3, 0.3), (1.8, 1.0)])
def test_lococo_0_1_state_dicts_load_with_lambda_clamped_into_range(raw, expected):
    head, _ = _head(lam=0.5)
    state = {k: v for k, v in head.state_dict().items() if k != "lam_logit"}
    state["lam"] = torch.tensor(raw)
    fresh, _ = _head(lam=0.5)
    if 0.0 <= raw <= 1.0:
        fresh.load_state_dict(state)
    else:
        with pytest.warns(UserWarning, match="outside \\[0, 1\\].*save_heads"):
            fresh.load_state_dict(state)
    assert float(fresh.lam.detach()) == pytest.approx(expected, abs=2e-4)
    assert fresh.lam_logit.isfinite()  # it can still train


@pytest.mark.parametrize("reindex", [False, True])
def test_query_scores_with_lambda_zero_keep_what_tova_keeps(tiny_llama, reindex):
    """score_mode "query" ranks slots by TOVA's rule: untrained (lambda 0) LoCoCo is TOVA, in prefill and
    decoding, so training starts at the best heuristic instead of below it."""
    torch.manual_seed(4)
    ids = torch.randint(0, 128, (1, 90))
    config = LoCoCoConfig(mem_size=16, buffer=4, segment_size=8, kernel_size=5, lambda_init=0.0, score_mode="query")
    lococo.attach(tiny_llama, config)
    logits = {}
    for name, kwargs in (("lococo", {}), ("tova", {"mem_size": 16, "buffer": 4})):
        cache = lococo.make_cache(tiny_llama, name, reindex_positions=reindex, **kwargs)
        out = [lococo.prefill(tiny_llama, ids[:, :60], cache=cache, segment_size=8).logits]
        with torch.no_grad():
            for t in range(60, 90):  # decoding: one token at a time, compressing every buffer + 1 tokens
                step = tiny_llama(input_ids=ids[:, t : t + 1], past_key_values=cache, use_cache=True)
                out.append(step.logits[:, -1])
        assert all(layer.compressions > 1 for layer in cache.compressed_layers)
        logits[name] = torch.stack(out)
    torch.testing.assert_close(logits["lococo"], logits["tova"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("native", [True, False])
def test_bfloat16_if_native_follows_the_device(tiny_llama, monkeypatch, native):
    from lococo.compressor import heads as heads_module

    monkeypatch.setattr(heads_module, "has_native_bf16", lambda device: native)
    lococo.attach(tiny_llama, LoCoCoConfig(mem_size=16, buffer=4, kernel_size=3, head_dtype="bfloat16_if_native"))
    expected = torch.bfloat16 if native else torch.float32
    assert {p.dtype for p in tiny_llama.lococo.parameters()} == {expected}
    out = lococo.prefill(tiny_llama, torch.randint(0, 128, (1, 48)), segment_size=8).logits
    assert torch.isfinite(out).all()


def test_shipped_heads_ask_for_bfloat16_where_it_is_native():
    from lococo.compressor.heads_io import SHIPPED_DIR, read_heads_config

    configs = [read_heads_config(folder)[0] for folder in sorted(SHIPPED_DIR.iterdir()) if folder.is_dir()]
    assert configs and {c.head_dtype for c in configs} == {"bfloat16_if_native"}


def _macs_per_token(head: ConvCompressorHead) -> int:
    """Multiply-adds per input token of the head's convolutions (weights times output positions)."""
    return sum(m.weight.numel() for m in head.modules() if isinstance(m, torch.nn.Conv1d))


@pytest.mark.parametrize("options", [{"bottleneck": 16}, {"separable": True}, {"bottleneck": 16, "separable": True}])
def test_cheaper_conv_options_cost_less_and_mix_like_the_full_conv(options):
    cfg = LoCoCoConfig(mem_size=32, hh_keep_rate=0.5, kernel_size=21, lambda_init=1.0, n_conv_layers=2)
    torch.manual_seed(0)
    full, cheap = ConvCompressorHead(64, cfg), ConvCompressorHead(64, LoCoCoConfig(**(cfg.to_dict() | options)))
    assert _macs_per_token(cheap) < _macs_per_token(full) / 3
    keys, values = torch.randn(2, 3, 40, 64), torch.randn(2, 3, 40, 64)
    valid = torch.ones(2, 3, 40, dtype=torch.bool)
    valid[0, :, :7] = False  # left padding in one row
    logits = cheap.mixing_logits(keys, values, valid)
    assert logits.shape == (2, 3, cfg.n_fused, 40)
    # a padded row mixes as the row alone: padding is zeroed before every conv (the projection has no bias)
    alone = cheap.mixing_logits(keys[:1, :, 7:], values[:1, :, 7:], None)
    assert torch.allclose(logits[0, :, :, 7:], alone[0], atol=1e-5)
    w = lococo_compress(cheap, cfg.n_heavy, 0, keys, torch.ones_like(values), torch.rand(2, 3, 40), valid[:, 0])
    assert torch.allclose(w.values, torch.ones_like(w.values), atol=1e-5)  # still convex mixtures


def test_cheaper_conv_heads_save_and_load(tiny_llama, tmp_path):
    from conftest import tiny_llama_config

    lococo.attach(tiny_llama, LoCoCoConfig(mem_size=16, buffer=4, kernel_size=5, bottleneck=8, separable=True))
    ids = torch.randint(0, 128, (1, 60))
    before = lococo.prefill(tiny_llama, ids, segment_size=8).logits
    lococo.save_heads(tiny_llama, tmp_path / "h")
    fresh = build_model(tiny_llama_config())
    lococo.load_heads(fresh, tmp_path / "h")
    assert torch.equal(lococo.prefill(fresh, ids, segment_size=8).logits, before)
