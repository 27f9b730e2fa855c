"""Multi-turn chat on one KV cache (runtime_harness/chat.py), the multi-turn templates, the context policy."""
import json
from pathlib import Path

import pytest
import torch

from llama_mobile.core.bundle import verify_bundle
from llama_mobile.core.errors import ConfigError, RuntimeFailure
from llama_mobile.core.presets import CHATML_SMOL, LLAMA3_CHAT, ChatTemplate
from llama_mobile.core.tokenizer import Tokenizer, chat_prompt, conversation_template, render_chat
from llama_mobile.export.identity import template_from_jinja
from llama_mobile.runtime_harness.chat import Conversation, ProgramEngine, RunnerEngine, check_messages, fit_history
from llama_mobile.runtime_harness.program import Program
from tests.conftest import export_tiny
from tests.test_control_tokens import llama3, smollm2  # noqa: F401  (fixtures)

VECTORS = Path(__file__).parent / "vectors"
# The tiny test tokenizer has no ChatML specials: a short plain format keeps conversations in its context.
TINY_TEMPLATE = ChatTemplate(name="tiny", prefix="", user="U:{content}\n", assistant_start="A:", bos="",
                             system="S:{content}\n", assistant="A:{content}\n", tool="T:{content}\n")


@pytest.fixture(scope="module")
def tiny_chat_bundle(tmp_path_factory, tiny_hf):
    return verify_bundle(export_tiny(tiny_hf, tmp_path_factory.mktemp("chat"), "fp32", context=128).bundle)


def test_multi_turn_logits_equal_the_whole_conversation_from_scratch(tiny_chat_bundle):
    bundle = tiny_chat_bundle
    tokenizer = Tokenizer(bundle.tokenizer)
    engine = ProgramEngine(Program.of(bundle), tokenizer, bundle.stop_ids)
    conversation = Conversation(engine, tokenizer, TINY_TEMPLATE, system="Be brief.", reserve=8)
    scratch = Program.of(bundle)  # a second runtime instance: its own KV cache
    for turn, message in enumerate(["Hello", "Tell me more", "Why?", "ok"], start=1):
        conversation.add("user", message)
        reply = conversation.reply(max_new_tokens=5)
        assert reply.reprefilled == (turn == 1)
        if turn > 1:  # only the new turn was prefilled
            assert reply.prompt_tokens < engine.position - reply.generated_tokens - 10
        ids = engine.ids[: engine.position - reply.generated_tokens]  # history + this turn's delta
        whole = scratch.forward(torch.tensor([ids]), 0)
        torch.testing.assert_close(engine.last_prefill_logits, whole, rtol=1e-4, atol=1e-4)
        assert reply.token_ids == engine.ids[len(ids):]  # every generated token is in the cache


def test_the_cache_holds_the_rendered_conversation(tiny_chat_bundle):
    """What was prefilled is the rendering of the whole conversation (the replies in the model's own ids)."""
    bundle = tiny_chat_bundle
    tokenizer = Tokenizer(bundle.tokenizer)
    engine = ProgramEngine(Program.of(bundle), tokenizer, bundle.stop_ids)
    conversation = Conversation(engine, tokenizer, TINY_TEMPLATE, reserve=8)
    for message in ["Hi", "And?"]:
        conversation.add("user", message)
        conversation.reply(max_new_tokens=3)
    assert tokenizer.decode(engine.ids) == conversation.cached_text
    assert render_chat(TINY_TEMPLATE, conversation.window).startswith(conversation.cached_text)


def test_context_policy_drops_the_oldest_turns_and_keeps_the_system_prompt(tiny_chat_bundle):
    bundle = tiny_chat_bundle
    tokenizer = Tokenizer(bundle.tokenizer)
    engine = ProgramEngine(Program.of(bundle), tokenizer, bundle.stop_ids)
    conversation = Conversation(engine, tokenizer, TINY_TEMPLATE, system="Sys", reserve=16)
    dropped = []
    for turn in range(12):
        conversation.add("user", f"message number {turn} with some words")
        reply = conversation.reply(max_new_tokens=8)
        dropped.append(reply.dropped_messages)
        assert reply.position <= engine.context
        assert conversation.window[0] == {"role": "system", "content": "Sys"}
        assert conversation.window[1]["role"] == "user"
    assert dropped[-1] > 0 and dropped == sorted(dropped)
    conversation.add("user", "x " * 200)  # alone longer than the context
    with pytest.raises(RuntimeFailure, match="does not fit the context"):
        conversation.reply(max_new_tokens=4)


def test_runner_continues_from_its_position_until_reset(tiny_chat_bundle):
    """What RunnerEngine relies on: TextLLMRunner.generate continues at its position, having fed every
    generated token but the last one it sampled."""
    from llama_mobile.runtime_harness.generate import Runner
    from llama_mobile.runtime_harness.greedy import program_greedy

    bundle = tiny_chat_bundle
    tokenizer = Tokenizer(bundle.tokenizer)
    engine = RunnerEngine(Runner.of(bundle), bundle.context_length)
    program = Program.of(bundle)
    first, second = "Alice was beginning", " to get very tired"
    for n in (1, 3):
        engine.reset()
        _, _, stats = engine.run_text(first, len(tokenizer.encode(first)), n, 0.0, None, ())
        sampled = program_greedy(program, tokenizer.encode(first), n)
        assert engine.position == len(tokenizer.encode(first)) + n - 1
        text, _, _ = engine.run_text(second, len(tokenizer.encode(second)), 6, 0.0, None, ())
        fed = tokenizer.encode(first) + sampled[: n - 1] + tokenizer.encode(second)
        expected = program_greedy(program, fed, 6)
        assert text == _printed(tokenizer, expected)


def _printed(tokenizer, ids):
    from tests.test_export_tiny import runner_printed_text

    return runner_printed_text(tokenizer, ids)


# --- templates ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("template", [CHATML_SMOL, LLAMA3_CHAT])
def test_multi_turn_template_agrees_with_the_single_turn_one(template):
    assert template.multi_turn
    assert template.assistant.startswith(template.assistant_start)
    default = "" if template.default_system is None else template.system.replace("{content}", template.default_system)
    assert template.prefix == template.bos + default
    for message in ["Hello", "<|im_end|>x", "Grüße 🦙"]:
        assert render_chat(template, [{"role": "user", "content": message}]) == chat_prompt(template, message)


def test_a_bundle_without_multi_turn_fields_maps_known_formats():
    old = {"name": "chatml", "prefix": CHATML_SMOL.prefix, "user": CHATML_SMOL.user,
           "assistant_start": CHATML_SMOL.assistant_start}
    assert conversation_template(old) == CHATML_SMOL
    with pytest.raises(ConfigError, match="no multi-turn parts"):
        conversation_template({"name": "plain", "prefix": "", "user": "{content}", "assistant_start": ""})


def test_shared_turn_vectors():
    vectors = json.loads((VECTORS / "chat_turns.json").read_text(encoding="utf-8"))
    assert len(vectors["cases"]) >= 8
    for case in vectors["cases"]:
        template = conversation_template(case["template"])
        assert render_chat(template, case["messages"], add_generation_prompt=case.get("generation_prompt", True)) \
            == case["expected"], case["name"]
    for case in vectors["errors"]:
        with pytest.raises(ConfigError):
            check_messages(case["messages"])


def test_turn_vectors_control_tokens_with_the_real_tokenizers(llama3, smollm2):
    """Only the template's own control tokens reach the ids, with the real SmolLM2 and Llama 3 tokenizers."""
    vectors = json.loads((VECTORS / "chat_turns.json").read_text(encoding="utf-8"))
    for case in vectors["cases"]:
        tokenizer = {"chatml": smollm2, "llama3": llama3}[case["template"]["name"]]
        names = {i: name for name, i in tokenizer.special_tokens.items()}
        spelled = [names[i] for i in tokenizer.control_ids(tokenizer.encode(case["expected"]))]
        assert spelled == case["control_tokens"], case["name"]


def test_manifest_round_trips_the_multi_turn_template():
    from llama_mobile.core.manifest import Manifest, schema_problems

    manifests = sorted((VECTORS / "manifests").glob("*.json"))
    data = json.loads(manifests[0].read_text())
    manifest = Manifest.from_dict(data)
    old_keys = set(data["prompt_template"])
    assert set(manifest.to_dict()["prompt_template"]) == old_keys  # an old template is written as before
    import dataclasses

    before = schema_problems(manifest.to_dict())
    manifest.prompt_template = CHATML_SMOL
    written = manifest.to_dict()
    assert schema_problems(written) == before  # the new fields add no problem
    assert written["prompt_template"]["tool"] == CHATML_SMOL.tool
    assert Manifest.from_dict(written).prompt_template == CHATML_SMOL
    assert dataclasses.asdict(Manifest.from_dict(written).prompt_template) == dataclasses.asdict(CHATML_SMOL)


SMOL_JINJA = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
              "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
              "<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
              "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
              "{% endif %}")


def test_checkpoint_jinja_templates_are_mapped_not_executed():
    assert template_from_jinja(SMOL_JINJA)[0] == CHATML_SMOL
    llama = "{{- bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n" \
            "{{ m['content'] }}<|eot_id|>{% endfor %}Cutting Knowledge Date"
    template, note = template_from_jinja(llama)
    assert template == LLAMA3_CHAT and "not reproduced" in note
    plain_chatml = "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n'}}"
    template, _ = template_from_jinja(plain_chatml)
    assert template.default_system is None and render_chat(template, [{"role": "user", "content": "x"}]) == \
        "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"
    assert template_from_jinja("[INST] {{ m }} [/INST]")[0] is None
    assert template_from_jinja(None)[0] is None


def test_a_hugging_face_checkpoints_jinja_template_reaches_the_loaded_model(tmp_path, tiny_hf):
    """A generic checkpoint whose tokenizer_config.json carries a known (ChatML) Jinja template gets that
    template, mapped, never executed."""
    import shutil

    from llama_mobile.export.checkpoint import load_checkpoint

    folder = shutil.copytree(tiny_hf, tmp_path / "hf")
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": SMOL_JINJA}))
    loaded = load_checkpoint("llama", folder)
    assert loaded.chat_template.name == CHATML_SMOL.name and loaded.chat_template.user == CHATML_SMOL.user


def test_context_vectors():
    """The drop-oldest policy, shared with the Kotlin core: tokens counted as code points of the rendering."""
    vectors = json.loads((VECTORS / "chat_context.json").read_text(encoding="utf-8"))
    for case in vectors["cases"]:
        template = conversation_template(case["template"])
        if case["dropped"] is None:
            with pytest.raises(RuntimeFailure):
                fit_history(template, case["messages"], len, case["budget"])
        else:
            assert fit_history(template, case["messages"], len, case["budget"]) == case["dropped"], case["name"]


# --- the commands ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_turns_bundle(tiny_chat_bundle, tmp_path_factory):
    """The tiny bundle with a multi-turn template in its manifest (the manifest itself is not hashed)."""
    import dataclasses
    import shutil

    folder = tmp_path_factory.mktemp("turns") / "bundle"
    shutil.copytree(tiny_chat_bundle.path, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["prompt_template"] = {k: v for k, v in dataclasses.asdict(TINY_TEMPLATE).items() if v is not None}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def cli(*args, stdin: str | None = None):
    import subprocess
    import sys

    command = [str(Path(sys.executable).with_name("llama-mobile")), *map(str, args)]
    return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=600)


def test_chat_command_reads_stdin_lines(tiny_turns_bundle):
    done = cli("chat", tiny_turns_bundle, "--max-new-tokens", "4",
               stdin="Hi there\n/system Be short\nHello\n/tool {\"t\": 1}\n/reset\nAgain\n/quit\nnever read\n")
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stderr.splitlines() if line.startswith("(prefill")]
    assert len(notes) == 4  # Hi there, Hello, the tool result, Again
    assert "system prompt set" in done.stderr and "conversation reset" in done.stderr
    assert "Traceback" not in done.stderr


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


@pytest.mark.parametrize("messages, tools, code", [
    ('[{"role": "user", "content": "x"', None, 4),  # not JSON
    ([{"role": "narrator", "content": "x"}], None, 4),  # unknown role
    ([{"role": "user", "content": 5}], None, 4),
    ({"role": "user", "content": "x"}, None, 4),  # not a list
    ([{"role": "user", "content": "x"}], "[{\"name\": ", 4),  # tools not JSON
    ([{"role": "user", "content": "x"}], [{"name": "get weather"}], 4),  # a bad tool name
    ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], None, 4),  # nothing to answer
    ([{"role": "user", "content": "word " * 400}], None, 9),  # longer than the context on its own
])
def test_generate_messages_bad_input_is_one_line(tiny_turns_bundle, tmp_path, messages, tools, code):
    args = ["generate", tiny_turns_bundle, "--messages", write(tmp_path, "m.json", messages), "--json"]
    if tools is not None:
        args += ["--tools", write(tmp_path, "t.json", tools)]
    done = cli(*args)
    assert done.returncode == code, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr


def test_generate_prompt_and_messages_together_is_a_usage_error(tiny_turns_bundle, tmp_path):
    done = cli("generate", tiny_turns_bundle, "--prompt", "x", "--messages", write(tmp_path, "m.json", []))
    assert done.returncode == 2 and done.stderr.startswith("error: ")


def test_generate_messages_with_tools_and_a_long_history(tiny_turns_bundle, tmp_path):
    history = [{"role": "system", "content": "Sys"}]
    for turn in range(20):
        history += [{"role": "user", "content": f"question {turn} about things"},
                    {"role": "assistant", "content": f"answer {turn}"}]
    history.append({"role": "user", "content": "last"})
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    done = cli("generate", tiny_turns_bundle, "--messages", write(tmp_path, "m.json", history), "--json",
               "--max-new-tokens", "4")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["dropped_messages"] > 0 and "tool_calls" not in out
    done = cli("generate", tiny_turns_bundle, "--messages", write(tmp_path, "m.json", history[-1:]), "--tools",
               write(tmp_path, "t.json", tools), "--json", "--max-new-tokens", "4")
    # The tools' system prompt alone is longer than the tiny context: the policy cannot help.
    assert done.returncode == 9 and "does not fit the context" in done.stderr

