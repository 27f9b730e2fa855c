"""Attention sink (issue 23): a ring KV cache that keeps the first tokens, so a conversation never reaches the
end of the context. ExecuTorch's design (examples/models/llama/source_transformation/attention_sink.py) on
export/model.py's custom-kernel attention, with RoPE at true positions rather than ExecuTorch's remapped slots;
`export --attention-sink SINK,WINDOW`; runners that run past the cache."""
import json

import pytest
import torch
from click.testing import CliRunner

from llama_mobile.core.bundle import verify_bundle
from llama_mobile.core.errors import UsageError
from llama_mobile.core.manifest import AttentionSink, Manifest
from llama_mobile.core.presets import ChatTemplate
from llama_mobile.core.tokenizer import Tokenizer
from llama_mobile.export.model import build_model
from llama_mobile.runtime_harness.chat import Conversation, ProgramEngine, RunnerEngine
from llama_mobile.runtime_harness.generate import Runner
from llama_mobile.runtime_harness.greedy import program_greedy
from llama_mobile.runtime_harness.program import Program
from tests.checkpoints import TINY
from tests.conftest import export_tiny

SINK, WINDOW = 4, 16
CACHE = SINK + 2 * WINDOW  # 36 positions
TOKENS = [(7 * i + 3) % TINY.vocab_size for i in range(3 * CACHE)]
CHUNKS = (10, 16, 3, 1, 1, 16, 16, 9, 16, 1, 1, 1, 1, 16)  # prefills and decodes, across three wraps
TEMPLATE = ChatTemplate(name="tiny", prefix="", user="U:{content}\n", assistant_start="A:", bos="",
                        system="S:{content}\n", assistant="A:{content}\n", tool="T:{content}\n")


def _chunked(model_or_program, tokens, chunks, program=False):
    """Logits of the last position of each chunk, fed in order from position 0."""
    rows, pos = [], 0
    for size in chunks:
        ids = torch.tensor([tokens[pos:pos + size]])
        rows.append(model_or_program.forward(ids, pos)[0] if program else model_or_program(ids, torch.tensor([pos]))[0])
        pos += size
    return torch.stack(rows)


def _bf16(state):  # the tiny checkpoint is written in bf16: what the export reads
    return {k: v.to(torch.bfloat16).float() for k, v in state.items()}


@pytest.fixture(scope="module")
def sink_bundle(tmp_path_factory, tiny_hf):
    result = export_tiny(tiny_hf, tmp_path_factory.mktemp("sink"), "fp32", context=None, attention_sink=(SINK, WINDOW))
    return result, verify_bundle(result.bundle)


def test_the_window_equals_full_attention_while_the_sequence_fits(custom_ops, tiny_state):
    """Up to sink + window positions nothing has left the window: the sink model is full attention."""
    fits = SINK + WINDOW
    full = build_model(TINY, 64, dict(tiny_state))
    full.all_logits = True
    reference = full(torch.tensor([TOKENS[:fits]]), torch.tensor([0]))[0]
    sink = build_model(TINY, 64, dict(tiny_state))
    sink.use_attention_sink(SINK, WINDOW)
    sink.all_logits = True
    pieces, pos = [], 0
    for size in (7, 1, 8, 1, 1, 1, 1):  # a prefill, a decode, a chunk, decodes: 20 positions
        pieces.append(sink(torch.tensor([TOKENS[pos:pos + size]]), torch.tensor([pos]))[0])
        pos += size
    assert pos == fits
    torch.testing.assert_close(torch.cat(pieces), reference, rtol=0, atol=1e-5)
    # one more position and the oldest non-sink token leaves the window: no longer full attention
    beyond = sink(torch.tensor([[TOKENS[fits]]]), torch.tensor([fits]))[0, -1]
    full.all_logits = False
    full.reset_cache()
    assert not torch.allclose(beyond, full(torch.tensor([TOKENS[:fits + 1]]), torch.tensor([0]))[0], atol=1e-3)


def test_past_the_cache_it_is_full_attention_over_sinks_and_window_at_true_positions(custom_ops, tiny_state):
    """Across three wraps of the ring, chunked as a runner feeds it, the sink model equals one pass of the same
    model with a cache for every position, RoPE from its table, and a mask that keeps the sinks and the last
    WINDOW positions: every query-key distance is the true one (not ExecuTorch's remapped slot)."""
    n = sum(CHUNKS)
    full = build_model(TINY, n, dict(tiny_state))
    positions = torch.arange(n)
    delta = positions.unsqueeze(1) - positions
    visible = (delta >= 0) & ((positions < SINK) | (delta < WINDOW))
    ring = (positions.unsqueeze(0), torch.where(visible, 0.0, float("-inf")))
    cos, sin = full.rope_at(0, n)
    h = full.tok_embeddings(torch.tensor([TOKENS[:n]]))
    for layer in full.layers:
        h = layer(h, 0, cos, sin, full.rope_swap, ring)
    reference = full.head(h)[0]

    sink = build_model(TINY, 64, dict(tiny_state))
    sink.use_attention_sink(SINK, WINDOW)
    sink.all_logits = True
    pieces, pos = [], 0
    for size in CHUNKS:
        pieces.append(sink(torch.tensor([TOKENS[pos:pos + size]]), torch.tensor([pos]))[0])
        pos += size
    torch.testing.assert_close(torch.cat(pieces), reference, rtol=0, atol=1e-4)


def test_slots_and_mask_are_executorchs(custom_ops):
    """Our manager against ExecuTorch's CachePositionsManagerWithSink and _create_causal_mask_for_attention_sink."""
    from executorch.examples.models.llama.source_transformation.attention_sink import (
        CachePositionsManagerWithSink,
        _create_causal_mask_for_attention_sink,
    )

    from llama_mobile.export.model import CachePositionsWithSink

    ours, theirs, pos = CachePositionsWithSink(SINK, WINDOW), CachePositionsManagerWithSink(CACHE, SINK), 0
    for size in CHUNKS:
        slots, mask = ours.step(pos, size)
        expected = theirs.calculate_positions_and_update_indices(torch.tensor([pos]), size)
        assert torch.equal(slots, expected)
        assert torch.equal(mask, _create_causal_mask_for_attention_sink(theirs.cache_positions, WINDOW, SINK, pos,
                                                                         size).float())
        pos += size


def test_program_equals_the_eager_sink_model_past_the_cache(custom_ops, tiny_state, sink_bundle):
    result, bundle = sink_bundle
    manifest = json.loads((bundle.path / "manifest.json").read_text())
    assert manifest["runtime"]["attention_sink"] == {"sink_size": SINK, "window_size": WINDOW}
    assert manifest["runtime"]["context_length"] == CACHE and manifest["runtime"]["max_seq_len"] == WINDOW
    assert bundle.path.name.endswith(f"-sink{SINK}w{WINDOW}-xnnpack")
    # the gate compared against full attention over the positions that fit the window
    assert result.parity["passed"] and result.parity["metrics"]["positions"] == SINK + WINDOW
    assert Manifest.from_dict(result.manifest.to_dict()).runtime.attention_sink == AttentionSink(SINK, WINDOW)

    program = Program.of(bundle)
    eager = build_model(TINY, CACHE, _bf16(tiny_state))
    eager.use_attention_sink(SINK, WINDOW)
    assert sum(CHUNKS) == 3 * CACHE
    torch.testing.assert_close(_chunked(program, TOKENS, CHUNKS, program=True), _chunked(eager, TOKENS, CHUNKS),
                               rtol=0, atol=1e-4)


def test_generation_and_chat_continue_past_the_context(sink_bundle):
    from tests.test_export_tiny import runner_printed_text

    _, bundle = sink_bundle
    tokenizer = Tokenizer(bundle.tokenizer)
    prompt = "Alice was beginning to get"
    # TextLLMRunner (the phones' C++ runner) runs past the cache and agrees with the program token for token
    generated = Runner.of(bundle).generate(prompt, max_new_tokens=CACHE)
    assert len(tokenizer.encode(prompt)) + generated.stats.generated_tokens > CACHE
    expected = program_greedy(Program.of(bundle), tokenizer.encode(prompt), CACHE)
    assert generated.text == runner_printed_text(tokenizer, expected[:generated.stats.generated_tokens + 1])
    # ... and continues from its position call after call (what a chat app does), past the cache
    engine, mirror = RunnerEngine(Runner.of(bundle), bundle.context_length), Program.of(bundle)
    for text in ["Alice was", " beginning to", " get very", " tired of", " sitting by"]:
        ids = tokenizer.encode(text)
        printed, _, _ = engine.run_text(text, len(ids), 8, 0.0, None, ())
        assert printed == runner_printed_text(tokenizer, _greedy_from(mirror, ids, 8))
    assert engine.sliding and engine.position > CACHE
    # a conversation goes on past the cache without dropping a message or rebuilding the cache
    engine = ProgramEngine(Program.of(bundle), tokenizer, bundle.stop_ids)
    conversation = Conversation(engine, tokenizer, TEMPLATE, system="S", reserve=8)
    for turn in range(6):
        conversation.add("user", f"q{turn}")
        reply = conversation.reply(max_new_tokens=6)
        assert reply.dropped_messages == 0 and (turn == 0) == reply.reprefilled
    assert engine.sliding and engine.position > 2 * CACHE


def _greedy_from(program, ids, steps):
    """What the runner does from its position: prefill `ids` in max_seq_len chunks, sample `steps` tokens,
    feed all but the last."""
    position = getattr(program, "fed", 0)
    for start in range(0, len(ids), program.max_seq_len):
        logits = program.forward(torch.tensor([ids[start:start + program.max_seq_len]]), position + start)
    position += len(ids)
    out = [int(logits.argmax(-1))]
    for _ in range(steps - 1):
        logits = program.forward(torch.tensor([[out[-1]]]), position)
        position += 1
        out.append(int(logits.argmax(-1)))
    program.fed = position
    return out


@pytest.mark.parametrize("value, message", [
    ("4", "is not SINK,WINDOW"), ("a,b", "is not SINK,WINDOW"), ("4,508,2", "is not SINK,WINDOW"),
    ("0,508", "sink must be at least 1"), ("4,8", "window must be at least 16"),
])
def test_bad_option_values_are_one_line_usage_errors(value, message):
    from llama_mobile.cli.main import main

    result = CliRunner().invoke(main, ["export", "--attention-sink", value])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "--attention-sink" in errors[0] and message in errors[0], result.output


@pytest.mark.parametrize("options, message", [
    ({"context": 64}, "disagree: the sink's cache is 36"),
    ({"target": "coreml-ios18", "recipe": "coreml-fp16"}, "custom SDPA with a mask"),
    ({"kv_cache": "int8"}, "needs a float32 KV cache"),
    ({"attention_sink": (0, 16)}, "sink must be at least 1"),
])
def test_combinations_that_cannot_run_are_refused_before_loading(tiny_hf, tmp_path, options, message):
    from llama_mobile.jobs.export_job import ExportRequest, run_export

    request = ExportRequest(**{"model": "llama", "checkpoint": tiny_hf, "recipe": "fp32", "target": "xnnpack",
                               "output_dir": tmp_path, "attention_sink": (SINK, WINDOW), **options})
    with pytest.raises(UsageError, match=message):
        run_export(request)
    assert not any(tmp_path.iterdir())
