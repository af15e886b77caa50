"""Context extension: RoPE scaling, LoRA through peft, save/load as one unit, merging."""

import pytest
import torch

import lococo
from conftest import build_model, tiny_llama_config
from lococo import ConfigError, IncompatibleModelError
from lococo.extension import (
    add_lora,
    apply_rope_scaling,
    embeddings_and_norms,
    load_extended,
    merge_lora,
    save_extended,
)


def _extended(seed=0):
    model = build_model(tiny_llama_config(max_position_embeddings=256))
    factor = apply_rope_scaling(model, 1024)
    lococo.attach(model, lococo.LoCoCoConfig(mem_size=16, buffer=4, kernel_size=5))
    lora = add_lora(model)
    torch.manual_seed(seed)
    with torch.no_grad():  # stand-in for training: non-trivial adapter, heads, norms
        for name, p in model.named_parameters():
            if "lora_" in name or name.startswith("lococo.") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.05)
    return model, lora, factor


def test_linear_interpolation_factor_and_frequencies():
    model, _, factor = _extended()
    plain = build_model(tiny_llama_config(max_position_embeddings=256))
    assert factor == 4.0
    assert model.config.rope_parameters["rope_type"] == "linear"
    assert torch.allclose(model.model.rotary_emb.inv_freq * 4.0, plain.model.rotary_emb.inv_freq)
    with pytest.raises(ConfigError, match="must exceed"):
        apply_rope_scaling(plain, 128)
    with pytest.raises(ConfigError, match="rope scaling"):
        apply_rope_scaling(plain, 1024, "ntk-magic")


def test_lora_targets_the_attention_projections():
    model, _, _ = _extended()
    names = [n for n, _ in model.named_parameters() if "lora_" in n]
    assert names and {n.split(".")[-4] for n in names} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    extra = embeddings_and_norms(model)
    assert "model.embed_tokens.weight" in extra and not any("lora_" in n for n in extra)


def test_save_and_load_round_trip_gives_identical_logits(tmp_path):
    model, lora, _ = _extended()
    ids = torch.randint(0, 128, (1, 70))
    before = lococo.prefill(model, ids, segment_size=8).logits
    save_extended(model, tmp_path / "ext", lora_config=lora)
    fresh = build_model(tiny_llama_config(max_position_embeddings=256))
    load_extended(fresh, tmp_path / "ext")
    after = lococo.prefill(fresh, ids, segment_size=8).logits
    assert torch.allclose(before, after, atol=1e-6)


def test_merged_and_unmerged_models_agree():
    model, _, _ = _extended()
    ids = torch.randint(0, 128, (1, 70))
    before = lococo.prefill(model, ids, segment_size=8).logits
    assert merge_lora(model) == 8  # 4 projections x 2 layers
    assert not any("lora_" in n for n, _ in model.named_parameters())
    after = lococo.prefill(model, ids, segment_size=8).logits
    assert torch.allclose(before, after, atol=1e-4)


def test_loading_onto_another_base_is_refused(tmp_path):
    model, lora, _ = _extended()
    save_extended(model, tmp_path / "ext", lora_config=lora)
    other = build_model(tiny_llama_config(max_position_embeddings=512))
    with pytest.raises(IncompatibleModelError, match="native length"):
        load_extended(other, tmp_path / "ext")


@pytest.mark.parametrize("train_embeddings_norms", [False, True])
def test_training_changes_only_lora_heads_and_chosen_extras(tmp_path, train_embeddings_norms):
    from lococo.training.loop import train_heads
    from train_tiny import tiny_config, tiny_rows

    model = build_model(tiny_llama_config(max_position_embeddings=256))
    base = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = tiny_config(tmp_path, extend_to=1024, train_embeddings_norms=train_embeddings_norms, lr_lora=1e-2)
    final = train_heads(model, tiny_rows(), cfg)
    assert final.name == "extended"
    changed = {k for k, v in model.state_dict().items() if k in base and not torch.equal(v, base[k])}
    extras = {k for k in changed if "embed" in k or "norm" in k}
    assert bool(extras) == train_embeddings_norms
    assert changed - extras <= {k for k in base if "rotary" in k}  # base weights untouched (LoRA is separate)
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in model.named_parameters())
    ids = torch.randint(0, 128, (1, 70))
    before = lococo.prefill(model, ids, segment_size=16).logits
    fresh = build_model(tiny_llama_config(max_position_embeddings=256))
    load_extended(fresh, final)
    assert torch.allclose(lococo.prefill(fresh, ids, segment_size=16).logits, before, atol=1e-5)


def test_cli_extension_option_loads_the_unit_and_excludes_heads(tmp_path, monkeypatch):
    import argparse

    from lococo import models
    from lococo.commands import cli

    model, lora, _ = _extended()
    ids = torch.randint(0, 128, (1, 70))
    before = lococo.prefill(model, ids, segment_size=8).logits
    save_extended(model, tmp_path / "ext", lora_config=lora)
    fresh = build_model(tiny_llama_config(max_position_embeddings=256))
    monkeypatch.setattr(models, "load_model", lambda *a, **k: (fresh, None))
    parser = argparse.ArgumentParser()
    cli.add_model_args(parser, extension=True)
    args = parser.parse_args(["--extension", str(tmp_path / "ext")])
    loaded, _ = cli.load_model_from_args(args)
    assert loaded.config.max_position_embeddings == 1024
    assert torch.allclose(lococo.prefill(loaded, ids, segment_size=8).logits, before, atol=1e-6)
    args.heads = str(tmp_path / "ext")
    with pytest.raises(lococo.LococoError, match="not both"):
        cli.load_model_from_args(args)


def test_the_adapter_in_an_extension_folder_loads_with_peft_itself(tmp_path):
    from peft import PeftModel

    model, lora, _ = _extended()
    save_extended(model, tmp_path / "ext", lora_config=lora)
    assert (tmp_path / "ext" / "adapter_config.json").is_file()
    # peft's own loader on the same base (same RoPE scaling, norms and heads): the same outputs
    base = build_model(tiny_llama_config(max_position_embeddings=256))
    apply_rope_scaling(base, 1024)
    base.load_state_dict({k.replace(".base_layer", ""): v for k, v in model.state_dict().items()
                          if "lora_" not in k and not k.startswith("lococo.")})
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "ext"))
    ids = torch.randint(0, 128, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(peft_model(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)
