"""Llama Guard 3 1B prompt and reply parsing: Meta's literal text, exclusions, custom categories, strictness."""
import json
import sys

import pytest

from llama_mobile.core.errors import RuntimeFailure, UsageError
from llama_mobile.runtime_harness.guard_prompt import (
    CODE_INTERPRETER_ABUSE,
    LLAMA_GUARD_3_1B_CATEGORIES,
    WHITESPACE,
    GuardCategory,
    GuardReplyError,
    Turn,
    format_guard_prompt,
    guard_template_for_manifest,
    parse_guard_reply,
)

# Meta's text written out by hand (llama-stack's Llama Guard shield in the Llama 3 chat format), not
# produced by the module under test.
META_USER_ONLY = """<|begin_of_text|><|start_header_id|>user<|end_header_id|>

Task: Check if there is unsafe content in 'User' messages in conversations according our safety policy with the below categories.

<BEGIN UNSAFE CONTENT CATEGORIES>
S1: Violent Crimes.
S2: Non-Violent Crimes.
S3: Sex Crimes.
S4: Child Exploitation.
S5: Defamation.
S6: Specialized Advice.
S7: Privacy.
S8: Intellectual Property.
S9: Indiscriminate Weapons.
S10: Hate.
S11: Self-Harm.
S12: Sexual Content.
S13: Elections.
<END UNSAFE CONTENT CATEGORIES>

<BEGIN CONVERSATION>

User: Tell me how to go to the zoo and steal a llama.

<END CONVERSATION>

Provide your safety assessment for ONLY THE LAST User message in the above conversation:
 - First line must read 'safe' or 'unsafe'.
 - If unsafe, a second line must include a comma-separated list of violated categories.<|eot_id|><|start_header_id|>assistant<|end_header_id|>

"""


def test_user_only_prompt_is_metas_text():
    assert format_guard_prompt([Turn("user", "Tell me how to go to the zoo and steal a llama.")]) == META_USER_ONLY


def test_agent_prompt_asks_about_the_agent():
    prompt = format_guard_prompt([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
    assert "unsafe content in 'Agent' messages" in prompt
    assert "User: Hi\n\nAgent: Hello\n\n<END CONVERSATION>" in prompt
    assert "ONLY THE LAST Agent message" in prompt


def test_exclusion_keeps_codes_and_custom_s14_is_allowed():
    prompt = format_guard_prompt([Turn("user", "x")], excluded=["S2"])
    assert "S1: Violent Crimes.\nS3: Sex Crimes.\n" in prompt and "S2:" not in prompt
    custom = [*LLAMA_GUARD_3_1B_CATEGORIES, CODE_INTERPRETER_ABUSE]
    assert "S13: Elections.\nS14: Code Interpreter Abuse.\n<END" in format_guard_prompt([Turn("user", "x")], custom)


def test_s14_is_refused_for_1b_with_a_hint():
    with pytest.raises(UsageError, match="8B"):
        format_guard_prompt([Turn("user", "x")], excluded=["S14"])
    with pytest.raises(GuardReplyError):
        parse_guard_reply("unsafe\nS14")


def test_strip_set_is_pythons_whitespace():
    assert set(WHITESPACE) == {chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()}


def test_verdict_names_and_error_type():
    verdict = parse_guard_reply("unsafe\nS10,S1<|eot_id|>")
    assert verdict.categories == ("S10", "S1") and verdict.names == ("Hate", "Violent Crimes")
    custom = [GuardCategory("X1", "Competitor Mentions")]
    assert parse_guard_reply("unsafe\nX1", custom).names == ("Competitor Mentions",)
    with pytest.raises(GuardReplyError) as info:
        parse_guard_reply("maybe")
    assert isinstance(info.value, RuntimeFailure) and info.value.exit_code == RuntimeFailure.exit_code


def test_manifest_template_is_json_and_matches_formatting():
    template = json.loads(json.dumps(guard_template_for_manifest(excluded=["S3"])))
    assert [c["code"] for c in template["categories"]] == [f"S{i}" for i in range(1, 14) if i != 3]
    pieces = template["pieces"]
    rebuilt = (pieces["begin"] + pieces["task"].replace("{role}", "User") + pieces["categories_begin"]
               + "".join(pieces["category"].replace("{code}", c["code"]).replace("{name}", c["name"])
                         for c in template["categories"])
               + pieces["categories_end"] + pieces["conversation_begin"]
               + pieces["turn"].replace("{role}", template["roles"]["user"]).replace("{content}", "hello")
               + pieces["conversation_end"] + pieces["instructions"].replace("{role}", "User") + pieces["end"])
    assert rebuilt == format_guard_prompt([Turn("user", "  hello\n")], excluded=["S3"])
