"""The training loop: only the heads learn, resume is exact, N processes = 1 process with N x accumulation."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lococo
from conftest import build_model, tiny_llama_config
from lococo import ConfigError, LoCoCoConfig
from lococo.training import loop
from lococo.training.config import TrainConfig
from lococo.training.loop import learning_segments, train_heads
from train_tiny import tiny_config, tiny_rows

HERE = Path(__file__).parent


def _heads(folder) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / "lococo_heads.safetensors"))


def test_only_the_heads_change(tmp_path):
    model = build_model(tiny_llama_config())
    base = {k: v.clone() for k, v in model.state_dict().items()}
    lococo.attach(model, lococo.LoCoCoConfig(mem_size=8, segment_size=16, buffer=2, kernel_size=3))
    initial = {k: v.clone() for k, v in model.lococo.state_dict().items()}
    final = train_heads(model, tiny_rows(), tiny_config(tmp_path))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in base.items())
    trained = _heads(final)
    assert any(not torch.equal(trained[k], initial[k]) for k in initial)
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 7))
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in metrics)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000004", "step_000006"]


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    straight = train_heads(build_model(tiny_llama_config()), tiny_rows(), tiny_config(tmp_path / "a"))

    real_save = loop.save_checkpoint

    def crash_after_step_4(out_dir, step, *args, **kwargs):
        path = real_save(out_dir, step, *args, **kwargs)
        if step == 4:
            raise KeyboardInterrupt("simulated kill")
        return path

    monkeypatch.setattr(loop, "save_checkpoint", crash_after_step_4)
    with pytest.raises(KeyboardInterrupt):
        train_heads(build_model(tiny_llama_config()), tiny_rows(), tiny_config(tmp_path / "b"))
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    assert not (tmp_path / "b" / "heads").exists()
    resumed = train_heads(build_model(tiny_llama_config()), tiny_rows(), tiny_config(tmp_path / "b", resume=True))
    a, b = _heads(straight), _heads(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_deeper_truncated_backprop_runs_and_differs(tmp_path):
    one = _heads(train_heads(build_model(tiny_llama_config()), tiny_rows(), tiny_config(tmp_path / "k1")))
    two = _heads(train_heads(build_model(tiny_llama_config()), tiny_rows(), tiny_config(tmp_path / "k2", tbptt=2)))
    assert all(torch.isfinite(v).all() for v in two.values())
    assert any(not torch.allclose(one[k], two[k]) for k in one)


def test_learning_segments_follow_the_lazy_trigger():
    assert learning_segments(4, 512, 128, 16) == [False, True, True, True]
    assert learning_segments(4, 512, 512, 16) == [False, False, True, True]


@pytest.mark.parametrize(
    "overrides, words",
    [(dict(max_steps=0), "max_steps"), (dict(warmup_steps=10, max_steps=5), "warmup_steps"),
     (dict(save_dtype="int8"), "save_dtype")],
)
def test_bad_recipes_are_config_errors(overrides, words):
    with pytest.raises(ConfigError, match=words):
        TrainConfig(**overrides).validate()
    with pytest.raises(ConfigError, match="rows"):
        TrainConfig(n_segments=2, segment_size=8).validate(torch.zeros(3, 10, dtype=torch.long))


@pytest.mark.skipif(shutil.which("accelerate") is None and not (Path(sys.executable).parent / "accelerate").exists(),
                    reason="accelerate launcher not installed")
def test_two_processes_equal_one_process_with_doubled_accumulation(tmp_path):
    script = str(HERE / "train_tiny.py")
    launcher = str(Path(sys.executable).parent / "accelerate")
    subprocess.run([sys.executable, script, str(tmp_path / "one"), "--grad-accum", "4", "--max-steps", "3"],
                   check=True, capture_output=True)
    two = subprocess.run(
        # accelerate's --cpu launcher needs MPI for several processes; --multi_gpu launches through torchrun,
        # and the script's Accelerator(cpu=True) then runs on the CPU with the gloo backend.
        [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", script, str(tmp_path / "two"), "--grad-accum", "2", "--max-steps", "3"],
        capture_output=True, text=True,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _heads(tmp_path / "one" / "heads"), _heads(tmp_path / "two" / "heads")
    assert (tmp_path / "two" / "metrics.jsonl").read_text().count("\n") == 3
    assert all(torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4) for k in a)
    first = json.loads((tmp_path / "one" / "metrics.jsonl").read_text().splitlines()[0])
    second = json.loads((tmp_path / "two" / "metrics.jsonl").read_text().splitlines()[0])
    assert abs(first["loss"] - second["loss"]) < 1e-5


def _head_grads(model, rows_per_micro, cfg) -> dict[str, torch.Tensor]:
    """Heads' gradient after one optimiser step's worth of micro-batches, scaled as train_heads does."""
    from accelerate import Accelerator

    model.zero_grad(set_to_none=True)
    scale = loop.loss_scale(cfg)
    for i, rows in enumerate(rows_per_micro):
        loop.sequence_loss(model, model, rows, cfg, Accelerator(cpu=True), scale,
                           sync_at_end=i == len(rows_per_micro) - 1)
    return {n: p.grad.clone() for n, p in model.lococo.named_parameters()}


def test_gradient_does_not_depend_on_how_rows_are_batched(tmp_path):
    model = build_model(tiny_llama_config())
    cfg = tiny_config(tmp_path)
    loop.prepare_model(model, cfg)
    loop.trainable_parameters(model, cfg)
    rows = tiny_rows(2)
    batch_of_two = _head_grads(model, [rows], tiny_config(tmp_path, grad_accum=1, batch_size=2))
    accumulated = _head_grads(model, [rows[:1], rows[1:]], tiny_config(tmp_path, grad_accum=2, batch_size=1))
    singles = [_head_grads(model, [rows[i : i + 1]], tiny_config(tmp_path, grad_accum=1)) for i in range(2)]
    for name, grad in batch_of_two.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, accumulated[name], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(grad, (singles[0][name] + singles[1][name]) / 2, rtol=1e-4, atol=1e-7)


def test_heldout_metric_is_eval_ppl_on_the_same_text_and_cache(tmp_path):
    from lococo.evaluation.perplexity import perplexity

    model = build_model(tiny_llama_config())
    cfg = tiny_config(tmp_path)
    loop.prepare_model(model, cfg)
    rows = tiny_rows(3)
    training_metric = loop.heldout_perplexity(model, rows, cfg)
    evaluated = perplexity(model, [row[None] for row in rows], lambda: lococo.make_cache(model, "lococo"),
                           cfg.segment_size, progress=False)
    assert evaluated["tokens"] == 3 * (rows.shape[1] - 1)  # every position but the first of each row
    assert training_metric == pytest.approx(evaluated["ppl"], rel=1e-5)


def test_chunk_plan_reads_segments_then_decodes_the_tail_one_token_at_a_time(tmp_path):
    cfg = tiny_config(tmp_path, decode_tokens=5)
    plan = loop.chunk_plan(cfg)
    assert plan[:4] == [(0, 16), (16, 32), (32, 48), (48, 59)]
    assert plan[4:] == [(p, p + 1) for p in range(59, 64)]
    segments, tail = loop.learning_units(cfg, mem_size=8, buffer=2)
    assert segments == [False, True, True, True] and tail
    assert loop.loss_scale(cfg) == pytest.approx(1 / (4 * cfg.grad_accum))


def test_kl_is_zero_while_nothing_is_compressed_and_trains_once_it_is(tmp_path):
    from accelerate import Accelerator

    model = build_model(tiny_llama_config())
    rows = tiny_rows(1)
    roomy = tiny_config(tmp_path, mem_size=64, objective="kl")  # 64 tokens never exceed M + buffer
    loop.prepare_model(model, roomy)
    sums = loop.sequence_loss(model, model, rows, roomy, Accelerator(cpu=True), 1.0, sync_at_end=True)
    assert sums["tokens"] == 63 and sums["kl"] == pytest.approx(0.0, abs=1e-4) and sums["lm"] > 0
    final = train_heads(build_model(tiny_llama_config()), tiny_rows(), tiny_config(tmp_path / "kl", objective="kl",
                                                                                   decode_tokens=5))
    metrics = [json.loads(line) for line in (tmp_path / "kl" / "metrics.jsonl").read_text().splitlines()]
    assert all(m["kl"] > 0 and m["decode_loss"] > 0 for m in metrics)
    initial = build_model(tiny_llama_config())
    loop.prepare_model(initial, tiny_config(tmp_path / "kl"))
    trained = _heads(final)
    start = {k.removeprefix("lococo."): v for k, v in initial.lococo.state_dict().items()}
    assert any(not torch.allclose(trained[k], start[k.removeprefix("lococo.")]) for k in trained)


@pytest.mark.parametrize(
    "overrides, words",
    [(dict(objective="mse"), "objective"), (dict(objective="kl", extend_to=256), "extend-to"),
     (dict(objective="layer", extend_to=256), "extend-to"),
     (dict(decode_tokens=64), "decode_tokens"), (dict(positions="clamped"), "positions"),
     (dict(score_mode="mean"), "score_mode")],
)
def test_bad_signals_are_config_errors(tmp_path, overrides, words):
    with pytest.raises(ConfigError, match=words):
        tiny_config(tmp_path, **overrides).validate()


def test_heads_trained_with_reindexed_positions_read_that_way_by_default(tmp_path):
    model = build_model(tiny_llama_config())
    cfg = tiny_config(tmp_path, positions="reindexed", score_mode="query", max_steps=2)
    final = train_heads(model, tiny_rows(), cfg)
    saved = json.loads((Path(final) / "lococo_config.json").read_text())["config"]
    assert (saved["positions"], saved["score_mode"]) == ("reindexed", "query")
    fresh = build_model(tiny_llama_config())
    lococo.load_heads(fresh, final)
    assert lococo.make_cache(fresh, "lococo").policy.layer_average  # scored as trained: TOVA's rule
    assert lococo.make_cache(fresh, "lococo").reindex_positions  # the scheme the heads were trained with
    assert not lococo.make_cache(fresh, "lococo", reindex_positions=False).reindex_positions
    absolute = train_heads(build_model(tiny_llama_config()), tiny_rows(), tiny_config(tmp_path / "abs", max_steps=2))
    other = build_model(tiny_llama_config())
    lococo.load_heads(other, absolute)
    assert not lococo.make_cache(other, "lococo").reindex_positions


def test_heads_keep_their_own_score_mode_unless_the_recipe_sets_one(tmp_path):
    model = build_model(tiny_llama_config())
    lococo.attach(model, LoCoCoConfig(mem_size=8, buffer=2, segment_size=16, kernel_size=3, score_mode="accumulated"))
    final = train_heads(model, tiny_rows(), tiny_config(tmp_path, max_steps=1))
    assert json.loads((Path(final) / "lococo_config.json").read_text())["config"]["score_mode"] == "accumulated"


def test_reindexed_training_is_refused_where_positions_are_learned(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=2, n_positions=256)).eval()
    with pytest.raises(ConfigError, match="reindexed"):
        train_heads(gpt2, tiny_rows(), tiny_config(tmp_path, positions="reindexed", max_steps=1))


def _layer_losses(model, rows, cfg, grad=False):
    from lococo.training.layerwise import LayerwiseReader

    loop.prepare_model(model, cfg)
    plan = loop.chunk_plan(cfg)
    reader = LayerwiseReader(model, rows)
    return [loss for loss, _, _ in reader.chunks(plan, [grad] * len(plan))], reader


def test_layer_students_read_exactly_what_the_full_model_reads_until_they_compress(tmp_path):
    rows = tiny_rows(2)
    roomy = tiny_config(tmp_path, mem_size=64, objective="layer")  # 64 tokens never exceed M + buffer
    losses, _ = _layer_losses(build_model(tiny_llama_config()), rows, roomy)
    assert all(float(loss) < 1e-10 for loss in losses)  # same attention as the model's own, slot for slot
    losses, reader = _layer_losses(build_model(tiny_llama_config()), rows, tiny_config(tmp_path, objective="layer"))
    assert float(losses[0]) < 1e-10 and all(float(loss) > 1e-4 for loss in losses[1:])  # compressed memories lose
    assert all(layer.compressions == 3 for layer in reader.students.values())


def test_layer_gradient_reaches_every_head_through_the_memory_it_built(tmp_path):
    model = build_model(tiny_llama_config())
    losses, _ = _layer_losses(model, tiny_rows(1), tiny_config(tmp_path, objective="layer"), grad=True)
    torch.stack(losses).sum().backward()
    for name, p in model.lococo.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("lococo."))


def test_layer_objective_trains_and_logs_its_own_loss(tmp_path):
    model = build_model(tiny_llama_config())
    cfg = tiny_config(tmp_path, objective="layer", decode_tokens=5, max_steps=4, lr_heads=1e-2)
    final = train_heads(model, tiny_rows(), cfg)
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(m["loss"] == m["layer"] and 0 < m["layer"] < 1 and m["decode_loss"] > 0 for m in metrics)
    start = build_model(tiny_llama_config())
    loop.prepare_model(start, tiny_config(tmp_path))
    trained = _heads(final)
    assert any(not torch.allclose(v, start.lococo.state_dict()[k.removeprefix("lococo.")]) for k, v in trained.items())


def test_heads_set_to_bfloat16_if_native_train_in_float32(tmp_path, monkeypatch):
    from lococo.compressor import heads as heads_module

    monkeypatch.setattr(heads_module, "has_native_bf16", lambda device: True)
    model = build_model(tiny_llama_config())
    lococo.attach(model, LoCoCoConfig(mem_size=8, buffer=2, segment_size=16, kernel_size=3,
                                      head_dtype="bfloat16_if_native"))
    assert next(model.lococo.parameters()).dtype == torch.bfloat16
    final = train_heads(model, tiny_rows(), tiny_config(tmp_path, max_steps=1))
    assert {p.dtype for p in model.lococo.parameters()} == {torch.float32}
    assert json.loads((Path(final) / "lococo_config.json").read_text())["config"]["head_dtype"] == "bfloat16_if_native"


def test_the_recipe_trains_cheaper_conv_heads(tmp_path):
    final = train_heads(build_model(tiny_llama_config()), tiny_rows(),
                        tiny_config(tmp_path, bottleneck=4, separable=True, max_steps=1))
    saved = json.loads((Path(final) / "lococo_config.json").read_text())["config"]
    assert (saved["bottleneck"], saved["separable"]) == (4, True)
    assert any(".project." in k for k in _heads(final))
