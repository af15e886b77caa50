import json

import pytest
import torch

import lococo
from conftest import build_model, tiny_llama_config
from lococo import IncompatibleModelError, LoCoCoConfig, LococoError


def _trained_like(model):
    lococo.attach(model, LoCoCoConfig(mem_size=16, buffer=4, kernel_size=5))
    torch.manual_seed(3)
    for p in model.lococo.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return model


def test_round_trip_gives_identical_logits(tiny_llama, tmp_path):
    _trained_like(tiny_llama)
    ids = torch.randint(0, 128, (1, 80))
    before = lococo.prefill(tiny_llama, ids, segment_size=8).logits
    lococo.save_heads(tiny_llama, tmp_path / "heads")
    saved = json.loads((tmp_path / "heads" / "lococo_config.json").read_text())
    assert saved["fingerprint"]["num_kv_heads"] == 2 and saved["config"]["mem_size"] == 16
    fresh = build_model(tiny_llama_config())
    lococo.load_heads(fresh, tmp_path / "heads")
    after = lococo.prefill(fresh, ids, segment_size=8).logits
    assert torch.equal(before, after)


def test_bf16_storage_loads_back_into_fp32_heads(tiny_llama, tmp_path):
    _trained_like(tiny_llama)
    lococo.save_heads(tiny_llama, tmp_path / "h", dtype=torch.bfloat16)
    fresh = build_model(tiny_llama_config())
    heads = lococo.load_heads(fresh, tmp_path / "h")
    w = next(heads.parameters())
    assert w.dtype == torch.float32
    ref = tiny_llama.lococo.state_dict()
    for k, v in heads.state_dict().items():
        assert torch.allclose(v, ref[k], atol=1e-2, rtol=1e-2)


def test_mismatched_architecture_is_refused(tiny_llama, tmp_path):
    _trained_like(tiny_llama)
    lococo.save_heads(tiny_llama, tmp_path / "h")
    other = build_model(tiny_llama_config(num_key_value_heads=4))
    with pytest.raises(IncompatibleModelError, match="num_kv_heads"):
        lococo.load_heads(other, tmp_path / "h")


def test_missing_folder_and_double_load_are_clear(tiny_llama, tmp_path):
    with pytest.raises(LococoError, match="not a LoCoCo heads folder"):
        lococo.load_heads(tiny_llama, tmp_path)
    _trained_like(tiny_llama)
    lococo.save_heads(tiny_llama, tmp_path / "h")
    with pytest.raises(IncompatibleModelError, match="already has LoCoCo heads"):
        lococo.load_heads(tiny_llama, tmp_path / "h")
    lococo.load_heads(tiny_llama, tmp_path / "h", replace=True)


def test_save_overwrites_atomically(tiny_llama, tmp_path):
    _trained_like(tiny_llama)
    lococo.save_heads(tiny_llama, tmp_path / "h")
    lococo.save_heads(tiny_llama, tmp_path / "h")
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == ["lococo_config.json", "lococo_heads.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["h"]
