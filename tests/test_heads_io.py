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


def test_a_truncated_weights_file_is_one_clear_error_naming_it(tiny_llama, tmp_path):
    lococo.attach(tiny_llama, LoCoCoConfig(mem_size=16, kernel_size=5))
    folder = lococo.save_heads(tiny_llama, tmp_path / "heads")
    lococo.detach(tiny_llama)
    weights = folder / "lococo_heads.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # an interrupted download
    with pytest.raises(LococoError, match="lococo_heads.safetensors cannot be read as safetensors.*save the heads again"):
        lococo.load_heads(tiny_llama, folder)


def test_lococo_0_1_heads_folders_load_with_lambda_in_range(tiny_llama, tmp_path):
    import warnings

    from safetensors.torch import load_file, save_file

    lococo.attach(tiny_llama, LoCoCoConfig(mem_size=16, kernel_size=5))
    folder = lococo.save_heads(tiny_llama, tmp_path / "old")
    lococo.detach(tiny_llama)
    state = load_file(str(folder / "lococo_heads.safetensors"))  # rewrite it as lococo 0.1 stored it
    state = {k.replace("lam_logit", "lam"): (torch.tensor(-0.4) if k.endswith("lam_logit") else v) for k, v in state.items()}
    save_file(state, str(folder / "lococo_heads.safetensors"))
    meta = json.loads((folder / "lococo_config.json").read_text())
    meta["config"] |= {"clamp_lambda": False, "extra": {}}
    (folder / "lococo_config.json").write_text(json.dumps(meta))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        heads = lococo.load_heads(tiny_llama, folder)
    assert any("outside [0, 1]" in str(w.message) for w in caught)
    assert all(0.0 <= float(h.lam.detach()) <= 1e-3 for h in heads.heads.values())
