import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "llama_mobile.cli"]


def _every_command() -> list[list[str]]:
    """The group, every command and every subcommand, read from the CLI itself (a new one is covered)."""
    import click

    from llama_mobile.cli.main import main

    found = [[]]
    for name, command in sorted(main.commands.items()):
        found.append([name])
        if isinstance(command, click.Group):
            found += [[name, sub] for sub in sorted(command.commands)]
    return found


COMMANDS = _every_command()


def run(*args, timeout=600):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=Path(__file__).parent.parent)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "main")
def test_every_command_has_help_with_an_example(command):
    started = time.perf_counter()
    result = run(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Example" in result.stdout
    assert time.perf_counter() - started < 20  # heavy libraries load lazily


def test_listing_commands_emit_json():
    for command in (["models"], ["recipes"], ["targets"]):
        result = run(*command, "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)
    assert "llama3.2-1b" in json.loads(run("models", "--json").stdout)


@pytest.mark.parametrize("args,code,text", [
    (["export", "--recipe", "nope"], 2, "unknown recipe 'nope'"),
    (["export", "--model", "llama3.2-1b"], 2, "has no embedded weights"),
    (["export", "--model", "llama", "--checkpoint", "/nonexistent/ckpt"], 3, "checkpoint not found"),
    (["recipes", "show", "nope"], 2, "unknown recipe"),
    (["export", "--target", "hexagon"], 2, "Invalid value for '--target'"),
    (["export", "--model", "llama5"], 2, "Invalid value for '--model'"),
    (["verify", "/nonexistent/bundle"], 8, "bundle folder not found"),
])
def test_bad_input_is_one_line_with_its_exit_code(args, code, text, tmp_path):
    result = run(*args, "-o", tmp_path) if args[0] == "export" else run(*args)
    assert result.returncode == code, result.stderr
    lines = [l for l in result.stderr.strip().splitlines() if l.lower().startswith("error:")]
    assert len(lines) == 1 and text in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_export_verify_generate_on_a_tiny_checkpoint(tmp_path, tiny_hf):
    result = run("export", "--model", "llama", "--checkpoint", tiny_hf, "--recipe", "fp32", "--context", "64",
                 "-o", tmp_path, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    bundle = Path(report["bundle"])
    assert report["parity"]["passed"] and report["size_bytes"] > 0
    assert "[5/5] bundle done" in result.stderr  # progress per stage
    assert run("verify", bundle).returncode == 0
    generated = run("generate", bundle, "--prompt", "Alice was", "--max-new-tokens", "5", "--json")
    assert generated.returncode == 0, generated.stderr
    stats = json.loads(generated.stdout)["stats"]
    assert stats["generated_tokens"] >= 1 and stats["decode_tokens_per_s"] >= 0
    long_prompt = "Alice was beginning to get very tired " * 40
    too_long = run("generate", bundle, "--prompt", long_prompt)
    assert too_long.returncode == 9 and "context is 64" in too_long.stderr
    (bundle / "tokenizer.json").write_text("{}")
    tampered = run("generate", bundle, "--prompt", "hi")
    assert tampered.returncode == 8 and "SHA-256" in tampered.stderr
