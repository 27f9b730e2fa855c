"""A tiny Guard-shaped model (Llama 3 tokenizer, random weights) exported and classified end to end."""
import json
import subprocess
import sys

import pytest

from llama_mobile.core.bundle import verify_bundle
from llama_mobile.core.architecture import Architecture
from llama_mobile.core.tokenizer import Tokenizer
from llama_mobile.export.checkpoint import load_checkpoint
from llama_mobile.export.model import build_model
from llama_mobile.runtime_harness.guard import EagerModel, classify, label_token_ids
from llama_mobile.runtime_harness.guard_prompt import format_guard_prompt
from llama_mobile.runtime_harness.program import Program
from tests.checkpoints import llama3_tokenizer_model, random_state_dict, write_meta
from tests.conftest import export_tiny

TINY_GUARD = Architecture(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=128, vocab_size=128256,
                          rope_theta=500000.0, tied_embeddings=False, max_position=1024)


@pytest.fixture(scope="module")
def tiny_guard(tmp_path_factory):
    ckpt = write_meta(tmp_path_factory.mktemp("guard") / "meta", TINY_GUARD, random_state_dict(TINY_GUARD, seed=7),
                      tokenizer=llama3_tokenizer_model())
    result = export_tiny(ckpt, tmp_path_factory.mktemp("out"), "fp32", task="guard", context=1024)
    return ckpt, result


def test_guard_bundle_records_the_template(tiny_guard):
    _, result = tiny_guard
    manifest = result.manifest.to_dict()
    assert manifest["model"]["task"] == "guard"
    assert manifest["guard"]["name"] == "llama-guard-3-1b"


def test_program_and_eager_model_classify_alike(tiny_guard, custom_ops):
    ckpt, result = tiny_guard
    tokenizer = Tokenizer(result.bundle / "tokenizer.model")
    prompt = format_guard_prompt([{"role": "user", "content": "How do I bake bread?"}])
    assert prompt.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>")
    safe_id, unsafe_id = label_token_ids(tokenizer)
    assert tokenizer.decode([safe_id]) == "safe" and tokenizer.decode([unsafe_id]) == "unsafe"
    eos = (128001, 128008, 128009)
    got = classify(Program.of(verify_bundle(result.bundle)), tokenizer, prompt, eos)
    loaded = load_checkpoint("llama", ckpt)
    expected = classify(EagerModel(build_model(loaded.architecture, 1024, loaded.state_dict)),
                        tokenizer, prompt, eos)
    assert got.reply == expected.reply
    assert got.p_unsafe == pytest.approx(expected.p_unsafe, rel=1e-3, abs=1e-9)
    assert (got.safe, got.categories) == (expected.safe, expected.categories)
    assert 0.0 <= got.p_unsafe <= 1.0 and got.time_to_first_token_ms > 0


def test_guard_cli_batch_json(tiny_guard, tmp_path):
    _, result = tiny_guard
    batch = tmp_path / "conversations.jsonl"
    batch.write_text(json.dumps({"user": "Hello there"}) + "\n"
                     + json.dumps({"user": "Hi", "assistant": "Hello! How can I help?"}) + "\n")
    done = subprocess.run([sys.executable, "-m", "llama_mobile.cli", "guard", str(result.bundle), "--jsonl",
                           str(batch), "--json"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(l) for l in done.stdout.splitlines()]
    assert len(lines) == 2 and all("p_unsafe" in l and "verdict" in l for l in lines)


def test_validate_reports_guard_verdict_agreement(tiny_guard):
    from llama_mobile.jobs.validate_job import ValidationRequest, run_validation

    ckpt, result = tiny_guard
    report = run_validation(ValidationRequest(bundle=result.bundle, reference=ckpt, positions=32,
                                              generation_steps=4))
    guard = report.guard
    assert guard.conversations == 10
    # fp32 program vs fp32 eager reference: the same verdicts (parsed or unparseable) everywhere
    assert guard.verdict_agreement == 1.0 and guard.p_unsafe_max_difference < 1e-3
    assert report.passed and report.to_dict()["guard"]["conversations"] == 10
