"""The golden end-to-end test: a tiny model through export, the ExecuTorch runtime and TextLLMRunner."""
import json

import torch

from llama_mobile.core.bundle import verify_bundle
from llama_mobile.core.manifest import schema_problems
from llama_mobile.core.tokenizer import Tokenizer
from llama_mobile.export.checkpoint import load_checkpoint
from llama_mobile.export.model import build_model
from llama_mobile.runtime_harness.generate import Runner
from llama_mobile.runtime_harness.greedy import eager_greedy, program_greedy
from llama_mobile.runtime_harness.program import Program


def eager_greedy_from(checkpoint, prompt_ids, steps, context=64):
    loaded = load_checkpoint("llama", checkpoint)
    return eager_greedy(build_model(loaded.architecture, context, loaded.state_dict), prompt_ids, steps)


def test_fp32_program_gives_exactly_the_eager_greedy_tokens(tiny_hf, tiny_fp32_bundle, custom_ops):
    bundle = tiny_fp32_bundle.bundle
    prompt = Tokenizer(bundle / "tokenizer.json").encode("Alice was beginning to get")
    expected = eager_greedy_from(tiny_hf, prompt, 20)
    assert program_greedy(Program.of(verify_bundle(bundle)), prompt, 20) == expected
    # TextLLMRunner (the phones' C++ runner) agrees token for token.
    tokenizer = Tokenizer(bundle / "tokenizer.json")
    result = Runner.of(verify_bundle(bundle)).generate(
        "Alice was beginning to get", max_new_tokens=20)
    assert result.stats.generated_tokens >= 1
    assert result.text == runner_printed_text(tokenizer, expected[: result.stats.generated_tokens])


def runner_printed_text(tokenizer, ids):
    """What the C++ runner prints: every piece, except a lone byte that C's isprint/isspace reject."""
    def printed(piece: bytes) -> bool:
        return len(piece) != 1 or 0x20 <= piece[0] < 0x7F or 0x09 <= piece[0] <= 0x0D

    pieces = [tokenizer.token_bytes(t) for t in ids]
    return b"".join(p for p in pieces if printed(p)).decode("utf-8", errors="replace")


def test_stream_filter_drops_end_tokens_and_the_stats_line():
    from llama_mobile.runtime_harness.generate import _ReportFilter

    out = []
    stream = _ReportFilter(out.append, hide=("<|im_end|>",))
    for piece in ["Earth", " and", " Mars", "<|im_", "end|>", "\nPyTorch", "Observer {}\n"]:
        stream.feed(piece)
    stream.close()
    assert "".join(out) == "Earth and Mars"
    out.clear()
    stream = _ReportFilter(out.append, hide=("<|im_end|>",))
    for piece in ["a <", "b"]:  # a held-back prefix that turns out not to be a marker is released
        stream.feed(piece)
    stream.close()
    assert "".join(out) == "a <b"


def test_runner_restarts_from_position_zero_each_call(tiny_fp32_bundle):
    bundle = tiny_fp32_bundle.bundle
    runner = Runner.of(verify_bundle(bundle))
    first = runner.generate("Alice was", max_new_tokens=8).text
    assert runner.generate("Alice was", max_new_tokens=8).text == first


def test_bundle_is_complete_and_carries_the_runner_metadata(tiny_fp32_bundle):
    bundle = tiny_fp32_bundle.bundle
    manifest = verify_bundle(bundle).manifest.to_dict()
    assert schema_problems(manifest) == []
    assert set(manifest["files"]) == {"model.pte", "tokenizer.json", "parity.json"}
    meta = manifest["runtime"]["metadata"]
    assert meta["get_max_context_len"] == 64 and meta["use_kv_cache"] is True
    program = Program.of(verify_bundle(bundle))
    for name, value in meta.items():
        outputs = list(program.module.run_method(name, ()))
        assert (outputs if isinstance(value, list) else outputs[0]) == value, name
    assert not list(bundle.parent.glob(".*tmp*")), "no staging folder left behind"


def test_fp32_parity_is_near_identical(tiny_fp32_bundle):
    parity = json.loads((tiny_fp32_bundle.bundle / "parity.json").read_text())
    assert parity["passed"]
    assert parity["metrics"]["top1_agreement"] == 1.0
    assert parity["metrics"]["kl_mean"] < 1e-6


def test_8da4w_exports_quantized_and_runs(tiny_8da4w_bundle, tiny_fp32_bundle):
    manifest = tiny_8da4w_bundle.manifest.to_dict()
    assert any("Int8DynamicActivationIntxWeightConfig" in json.dumps(c)
               for c in manifest["recipe"]["torchao_configs"].values())
    fp32_size = tiny_fp32_bundle.manifest.to_dict()["files"]["model.pte"]["size"]
    assert manifest["files"]["model.pte"]["size"] < 0.6 * fp32_size
    assert tiny_8da4w_bundle.parity["metrics"]["positions"] == 48
    logits = Program.of(verify_bundle(tiny_8da4w_bundle.bundle)).forward(torch.tensor([[1, 2, 3]]), 0)
    assert logits.shape == (1, 300) and torch.isfinite(logits).all()
