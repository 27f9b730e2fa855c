"""Hostile and careless input (issue 19): what the tool writes and replaces, damaged programs, stopping
signals, temporary files, and option values that must be usage errors."""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from llama_mobile.cli.main import main
from llama_mobile.core.errors import UsageError
from tests.conftest import export_tiny

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llama_mobile.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})}, check=False)


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], stderr
    return lines[-1]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# 1. --name and the folders an export replaces


@pytest.mark.parametrize("name", ["../escape", "/tmp/abs", ".", "..", ".hidden", "a/b", "x" * 200, "tab\there"])
def test_export_name_must_be_a_plain_folder_name(name, tmp_path, tiny_hf):
    done = CliRunner().invoke(main, ["export", "--model", "llama", "--checkpoint", str(tiny_hf), "--recipe", "fp32",
                                     "-o", str(tmp_path / "out"), "--name", name])
    assert done.exit_code == 2 and "--name" in done.output
    with pytest.raises(UsageError, match="--name"):  # the job refuses it too, before reading a weight
        export_tiny(tiny_hf, tmp_path / "out", "fp32", name=name)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_export_never_replaces_an_input_or_a_folder_it_did_not_write(tmp_path, tiny_hf, tiny_fp32_bundle):
    checkpoint = shutil.copytree(tiny_hf, tmp_path / "ckpt")
    before = tree(checkpoint)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("a user's folder")
    nested = shutil.copytree(tiny_fp32_bundle.bundle, tmp_path / "holder")
    shutil.copytree(tiny_hf, nested / "ckpt")  # a checkpoint kept inside a bundle folder
    refused = [
        ("-o $(dirname CKPT) --name $(basename CKPT)", {"checkpoint": checkpoint, "out": tmp_path, "name": "ckpt"}),
        ("a folder this tool did not write", {"checkpoint": checkpoint, "out": tmp_path, "name": "mine"}),
        ("a bundle holding the checkpoint", {"checkpoint": nested / "ckpt", "out": tmp_path, "name": "holder"}),
        ("the output inside the checkpoint", {"checkpoint": tmp_path, "out": tmp_path, "name": "inside"}),
    ]
    for why, case in refused:
        with pytest.raises(UsageError, match="--name or -o") as caught:
            export_tiny(case["checkpoint"], case["out"], "fp32", name=case["name"], validate=False)
        assert "fix:" in str(caught.value), why
    assert tree(checkpoint) == before and (mine / "notes.txt").exists() and (nested / "ckpt").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "holder", "mine"]  # nothing staged, nothing moved
    # Its own bundle (and the .rejected copy beside it) it does replace.
    out = tmp_path / "out"
    shutil.copytree(tiny_fp32_bundle.bundle, out / "tiny")
    shutil.copytree(tiny_fp32_bundle.bundle, out / "tiny.rejected")
    result = export_tiny(checkpoint, out, "fp32", name="tiny", validate=False)
    assert result.bundle == out / "tiny" and (out / "tiny" / "manifest.json").is_file()


# 4. a damaged program with matching hashes


def damage(bundle: Path, copy: Path, seed: int) -> Path:
    """Flip bytes in model.pte's flatbuffer and rewrite the manifest entry to match: verify passes."""
    shutil.copytree(bundle, copy)
    program = copy / "model.pte"
    data = bytearray(program.read_bytes())
    rng = random.Random(seed)
    for _ in range(64):
        data[rng.randrange(8, 4096)] ^= 0xFF
    program.write_bytes(bytes(data))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["model.pte"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return copy


def test_a_damaged_program_is_a_runtime_failure_not_a_crash(tmp_path, tiny_hf, tiny_fp32_bundle):
    # Seed 2 makes ExecuTorch's loader dereference a bad offset (SIGSEGV, exit 139, before the fix);
    # 1 and 3 made it raise a bare RuntimeError (a traceback, exit 1).
    for seed in (1, 2, 3):
        bundle = damage(tiny_fp32_bundle.bundle, tmp_path / f"bad{seed}", seed)
        assert cli("verify", str(bundle)).returncode == 0
        done = cli("generate", str(bundle), "--prompt", "hi", "--max-new-tokens", "2")
        assert done.returncode == 9, done.stderr
        assert "model.pte" in one_error_line(done.stderr)
    done = cli("validate", str(tmp_path / "bad2"), "--reference", str(tiny_hf), "--positions", "16")
    assert done.returncode == 9, done.stderr
    assert "damaged" in one_error_line(done.stderr) or "cannot" in done.stderr


# 8. SIGTERM / SIGHUP mid-export


# The real CLI, held in its bundle stage (the tiny bundle's takes 0.2 s): the fsync of the finished
# staging folder waits, so the signal always lands while the staging folder exists.
HELD_EXPORT = """
import sys, time
import llama_mobile.core.atomic as atomic
fsync = atomic._fsync_dir
atomic._fsync_dir = lambda path: (time.sleep(300) if ".tmp-" in path.name else None, fsync(path))
from llama_mobile.cli.main import main
sys.argv[0] = "llama-mobile"
main()
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stopping_signal_mid_export_removes_staging_and_keeps_the_previous_bundle(signum, tmp_path, tiny_hf,
                                                                                    tiny_fp32_bundle):
    out = tmp_path / "out"
    previous = shutil.copytree(tiny_fp32_bundle.bundle, out / "tiny")
    before = tree(previous)
    process = subprocess.Popen([sys.executable, "-c", HELD_EXPORT, "export", "--model", "llama", "--checkpoint",
                                str(tiny_hf), "--recipe", "fp32", "--context", "64", "-o", str(out), "--name", "tiny"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    staging = out / f".tiny.tmp-{process.pid}"
    deadline = time.monotonic() + 600
    while not staging.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert staging.exists(), process.communicate()[1]
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 128 + signum, stderr
    assert signal.Signals(signum).name in stderr.strip().splitlines()[-1]
    assert sorted(p.name for p in out.iterdir()) == ["tiny"]  # no .tiny.tmp-PID, no .tiny.old-PID
    assert tree(previous) == before


# 9. temporary and log files in a shared $TMPDIR


def test_native_logs_follow_no_link_planted_in_tmpdir(tmp_path, tiny_fp32_bundle):
    uid = os.getuid()
    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    target = tmp_path / "victim.txt"  # a link makes O_CREAT create (or append to) the file it names
    (shared / f"llama-mobile-native-{uid}.log").symlink_to(target)  # the old fixed path
    elsewhere = tmp_path / "attacker"
    elsewhere.mkdir()
    (elsewhere / "native.log").symlink_to(target)
    (shared / f"llama-mobile-{uid}").symlink_to(elsewhere)  # the private folder's name, taken by a link
    done = cli("generate", str(tmp_path / "missing-bundle"), "--prompt", "hi", env={"TMPDIR": str(shared)})
    assert done.returncode == 8, done.stderr
    assert not target.exists()
    private = [p for p in shared.iterdir() if p.is_dir() and not p.is_symlink()]
    assert len(private) == 1 and (private[0].stat().st_mode & 0o777) == 0o700
    log = private[0] / "native.log"
    assert not log.is_symlink() and (log.stat().st_mode & 0o777) == 0o600


# 10. option values that are usage errors (exit 2, naming the option)

BUNDLE = "no-such-bundle"
USAGE_ERRORS = [
    (["generate", BUNDLE, "--prompt", "hi", "--temperature", "nan"], "--temperature"),
    (["generate", BUNDLE, "--prompt", "hi", "--temperature", "inf"], "--temperature"),
    (["generate", BUNDLE, "--prompt", ""], "--prompt"),
    (["generate", BUNDLE, "--prompt", "   "], "--prompt"),
    (["generate", BUNDLE, "--prompt", "hi", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["generate", "", "--prompt", "hi"], "BUNDLE"),
    (["guard", BUNDLE, "--user", ""], "--user"),
    (["bench", BUNDLE, "--prompt-lengths", "0"], "--prompt-lengths"),
    (["bench", BUNDLE, "--prompt-lengths", "32,-1"], "--prompt-lengths"),
    (["bench", BUNDLE, "--prompt-lengths", ","], "--prompt-lengths"),
    (["export", "--context", "0"], "--context"),
    (["export", "--context", "-5"], "--context"),
    (["export", "--recipe", ""], "--recipe"),
    (["export", "--device", ""], "--device"),
    (["export", "--checkpoint", ""], "--checkpoint"),
    (["export", "-o", ""], "--output"),
    (["validate", BUNDLE, "--min-top1", "nan"], "--min-top1"),
    (["validate", BUNDLE, "--max-kl-mean", "inf"], "--max-kl-mean"),
    (["validate", BUNDLE, "--max-ppl-ratio", "0"], "--max-ppl-ratio"),
    (["validate", BUNDLE, "--min-cosine", "2"], "--min-cosine"),
    (["validate", BUNDLE, "--reference", ""], "--reference"),
    (["prune", "-o", "x", "--lr", "nan"], "--lr"),
    (["prune", "-o", "x", "--lr", "0"], "--lr"),
    (["prune", "-o", "x", "--mlp-hidden", ","], "--mlp-hidden"),
    (["prune", "-o", "x", "--mlp-hidden", "0"], "--mlp-hidden"),
    (["prune", "-o", "x", "--keep-output-tokens", ""], "--keep-output-tokens"),
    (["prune", "-o", "x", "--name", "../x"], "--name"),
    (["plan", "--context", "0"], "--context"),
    (["plan", "--recipe", ""], "--recipe"),
]


@pytest.mark.parametrize("args,option", USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_invalid_option_values_are_usage_errors_naming_the_option(args, option):
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 2, done.output
    assert option in done.output


def test_export_context_zero_is_not_replaced_by_the_default(tmp_path, tiny_hf):
    with pytest.raises(UsageError, match="--context 0"):
        export_tiny(tiny_hf, tmp_path, "fp32", context=0, validate=False)
