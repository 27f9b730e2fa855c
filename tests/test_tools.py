"""Tool calling as Llama 3.2 does it (runtime_harness/tools.py): the prompt, the strict reply parser."""
import json
from pathlib import Path

import pytest

from llama_mobile.core.errors import ConfigError
from llama_mobile.core.tokenizer import conversation_template, render_chat
from llama_mobile.runtime_harness.tools import (
    TOOL_INSTRUCTIONS,
    ToolCall,
    format_calls,
    parse_reply,
    read_tools,
    render_messages,
    tools_system_prompt,
    with_tools,
)
from tests.test_control_tokens import llama3  # noqa: F401  (fixture)

VECTORS = Path(__file__).parent / "vectors"
PROMPTS = json.loads((VECTORS / "tool_prompts.json").read_text(encoding="utf-8"))
REPLIES = json.loads((VECTORS / "tool_replies.json").read_text(encoding="utf-8"))
META_FORMAT = Path(__file__).resolve().parent.parent / ".venv/lib/python3.11/site-packages/llama_models/llama3_2/text_prompt_format.md"


@pytest.mark.parametrize("case", PROMPTS["prompts"], ids=lambda c: c["name"])
def test_prompt_vectors(case):
    tools = read_tools(case["tools"])
    system = case["messages"][0]["content"] if case["messages"][0]["role"] == "system" else None
    assert tools_system_prompt(tools, system) == case["system"]
    rendered = render_chat(conversation_template(case["template"]), render_messages(with_tools(case["messages"], tools)))
    assert rendered == case["expected"]


def test_the_prompt_is_meta_s_llama_3_2_example_word_for_word():
    """The system turn of Meta's zero-shot example in llama_models, byte for byte."""
    if not META_FORMAT.is_file():
        pytest.skip("llama_models is not installed in .venv")
    text = META_FORMAT.read_text(encoding="utf-8")
    start = text.index("<|begin_of_text|><|start_header_id|>system", text.index("## Zero shot function calling"))
    example = text[start: text.index("<|eot_id|>", start)]
    assert PROMPTS["prompts"][0]["expected"].startswith(example + "<|eot_id|>")
    assert PROMPTS["instructions"] == TOOL_INSTRUCTIONS


def test_tool_prompt_control_tokens(llama3):
    """Tool descriptions cannot spell control tokens either."""
    case = PROMPTS["prompts"][3]
    ids = llama3.encode(case["expected"])
    names = {i: n for n, i in llama3.special_tokens.items()}
    assert [names[i] for i in llama3.control_ids(ids)].count("<|eot_id|>") == case["expected"].count("<|eot_id|>")


@pytest.mark.parametrize("case", PROMPTS["tool_errors"], ids=lambda c: c["name"])
def test_bad_tool_definitions_are_config_errors(case):
    with pytest.raises(ConfigError):
        read_tools(case["tools"])


@pytest.mark.parametrize("case", REPLIES["cases"], ids=lambda c: c["name"])
def test_reply_vectors(case):
    tools = read_tools(REPLIES["tools"])
    parsed = parse_reply(case["reply"], tools)
    assert [{"name": c.name, "arguments": c.arguments} for c in parsed.calls] == case["calls"]
    assert parsed.text == case["text"]
    assert (parsed.error is not None) == case["invalid"]
    assert not (parsed.calls and parsed.error)


def test_calls_round_trip_through_their_rendering():
    tools = read_tools(REPLIES["tools"])
    for case in REPLIES["cases"]:
        if case["calls"]:
            calls = [ToolCall(c["name"], c["arguments"]) for c in case["calls"]]
            again = parse_reply(format_calls(calls), tools)
            assert [(c.name, c.arguments) for c in again.calls] == [(c.name, c.arguments) for c in calls]


def test_every_prefix_of_a_call_is_flagged_never_raised():
    tools = read_tools(REPLIES["tools"])
    call = "[get_user_info(user_id=7890, special='bl\\'ack', tags=['a', \"b\"], nested={'k': [1, 2.5]})]"
    for end in range(1, len(call)):
        parsed = parse_reply(call[:end], tools)
        assert not parsed.calls
        if end > len("[get_user_info("):
            assert parsed.error, call[:end]
    assert parse_reply(call, tools).calls
