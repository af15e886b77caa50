"""Model loading: the offline reference model and user errors."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings

import pytest
import torch

from lococo.errors import ConfigError, LococoError
from lococo.models import REFERENCE_MODEL, load_model, prepare_tokenizer, resolve_dtype


def test_unknown_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(LococoError, match="not found.*offline reference model"):
        load_model(str(tmp_path / "no-such-model"))


def test_unknown_hub_name_offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time otherwise
    with pytest.raises(LococoError, match="'no-such-org/no-such-model' not found"):
        load_model("no-such-org/no-such-model")


def test_folder_without_model_is_a_clear_error(tmp_path):
    with pytest.raises(LococoError, match="could not load the model"):
        load_model(tmp_path)


def test_resolve_dtype():
    import torch

    assert resolve_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ConfigError, match="unknown dtype"):
        resolve_dtype("float8")


def test_prepare_tokenizer_sets_pad_and_left_padding():
    class Tok:
        pad_token = None
        eos_token = "</s>"
        padding_side = "right"

    tok = prepare_tokenizer(Tok())
    assert tok.pad_token == "</s>" and tok.padding_side == "left"


@pytest.mark.integration
def test_reference_model_loads(reference_model):
    model, tokenizer = reference_model
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.hidden_size) == (30, 3, 576)
    assert not model.training
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "left"
    ids = tokenizer("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1] :])


@pytest.mark.integration
def test_cached_load_in_fresh_process(reference_model):
    code = (
        "import time; t = time.perf_counter(); from lococo.models import load_model; load_model(); "
        "print(time.perf_counter() - t)"
    )
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy())
    wall = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    print(
        f"{REFERENCE_MODEL} cached load: {float(proc.stdout.split()[-1]):.1f} s in-process, {wall:.1f} s wall"
    )
    assert wall < 20


def test_half_precision_on_a_cpu_without_native_kernels_warns(monkeypatch):
    from conftest import build_model, tiny_llama_config
    from lococo import models

    model = build_model(tiny_llama_config()).to(torch.bfloat16)
    monkeypatch.setattr(models, "cpu_lacks_native", lambda dtype: dtype == torch.bfloat16)
    with pytest.warns(UserWarning, match="float32"):
        models.warn_slow_half_precision(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        models.warn_slow_half_precision(model.float())
