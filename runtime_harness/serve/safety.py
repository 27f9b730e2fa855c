"""Llama Guard as a Llama Stack shield: run_shield's and moderations' answers from a Guard bundle.

The prompt is runtime_harness.guard_prompt's (Meta's Llama Guard 3 format) with the categories the Guard
bundle's manifest lists; Meta's categories that the manifest leaves out are this shield's exclusions. As
Llama Stack's llama-guard provider does, a verdict whose categories are all excluded is safe, a violation
is level "error" with Meta's canned user message and {"violation_type": "S1,S2"} in its metadata, and a
moderation result maps the codes onto OpenAI's moderation categories. A reply that does not parse is
treated as a violation (violation_type "unparseable"): a shield that cannot say "safe" does not pass
the text.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from json import dumps

from llama_mobile.core.bundle import Bundle
from llama_mobile.core.tokenizer import Tokenizer
from llama_mobile.runtime_harness.guard import classify
from llama_mobile.runtime_harness.guard_prompt import (
    LLAMA_GUARD_3_1B_CATEGORIES,
    GuardCategory,
    GuardReplyError,
    Turn,
    format_guard_prompt,
    parse_guard_reply,
)
from llama_mobile.runtime_harness.program import Program
from llama_mobile.runtime_harness.serve.schema import bad

CANNED_RESPONSE = "I can't answer that. Can I help with something else?"  # Llama Stack's, word for word
PROVIDER = "llama-guard"
# OpenAI's moderation categories (and Llama Stack's custom/ ones) and the Llama Guard 3 codes behind each,
# as Llama Stack's llama-guard provider maps them.
OPENAI_CATEGORIES = {
    "violence": ("S1",), "violence/graphic": ("S1",), "harassment": ("S4",), "harassment/threatening": ("S1", "S4"),
    "hate": ("S10",), "hate/threatening": ("S10", "S1"), "illicit": ("S2",), "illicit/violent": ("S1", "S9"),
    "sexual": ("S3", "S12"), "sexual/minors": ("S4",), "self-harm": ("S11",), "self-harm/intent": ("S11",),
    "self-harm/instructions": ("S11", "S6"), "custom/defamation": ("S5",), "custom/specialized_advice": ("S6",),
    "custom/privacy_violation": ("S7",), "custom/intellectual_property": ("S8",), "custom/weapons": ("S9",),
    "custom/elections": ("S13",), "custom/code_interpreter_abuse": ("S14",),
}
ROLES = {"user": "user", "tool": "user", "ipython": "user", "assistant": "assistant"}  # system turns are not judged
MARGIN = 16  # tokens of the Guard's context kept free for its reply


@dataclass(frozen=True)
class Verdict:
    safe: bool
    codes: tuple[str, ...] = ()  # violated categories this shield judges
    names: tuple[str, ...] = ()
    excluded: tuple[str, ...] = ()  # categories the model named that this shield excludes
    p_unsafe: float = 0.0
    reply: str = ""
    error: str | None = None  # the reply did not parse

    @property
    def violation_type(self) -> str:
        return ",".join(self.codes) if self.codes else "unparseable"


class GuardShield:
    """A Guard bundle's program and prompt format. check() runs on its engine's worker thread."""

    def __init__(self, bundle: Bundle):
        self.bundle, self.identifier = bundle, bundle.path.name
        self.categories = manifest_categories(bundle)
        codes = {c.code for c in self.categories}
        self.excluded = tuple(c.code for c in LLAMA_GUARD_3_1B_CATEGORIES if c.code not in codes)
        self.known = self.categories + tuple(c for c in LLAMA_GUARD_3_1B_CATEGORIES if c.code not in codes)
        self.tokenizer = Tokenizer(bundle.tokenizer)
        self.program = Program.of(bundle)
        self.context = self.program.context_len

    def describe(self) -> dict:
        """The shield as GET /v1/shields lists it."""
        return {"identifier": self.identifier, "provider_id": PROVIDER, "provider_resource_id": self.identifier,
                "type": "shield", "params": {"categories": [c.code for c in self.categories],
                                             "excluded_categories": list(self.excluded)}}

    def check(self, turns: list[Turn]) -> Verdict:
        prompt = format_guard_prompt(turns, categories=self.categories)
        while len(self.tokenizer.encode(prompt)) > self.context - MARGIN:
            if len(turns) <= 1:
                raise bad(f"the conversation does not fit the Guard's context of {self.context} tokens",
                          "messages", "context_length_exceeded")
            turns = turns[2:] if len(turns) > 2 else turns[1:]  # the oldest exchange; the rest starts with a user turn
            prompt = format_guard_prompt(turns, categories=self.categories)
        result = classify(self.program, self.tokenizer, prompt, self.bundle.stop_ids)
        try:
            parsed = parse_guard_reply(result.reply, categories=self.known)
        except GuardReplyError as exc:
            return Verdict(safe=False, p_unsafe=result.p_unsafe, reply=result.reply, error=str(exc))
        judged = {c.code: c.name for c in self.categories}
        codes = tuple(c for c in parsed.categories if c in judged)
        return Verdict(safe=not codes, codes=codes, names=tuple(judged[c] for c in codes),
                       excluded=tuple(c for c in parsed.categories if c not in judged), p_unsafe=result.p_unsafe,
                       reply=result.reply)


def manifest_categories(bundle: Bundle) -> tuple[GuardCategory, ...]:
    """The categories a Guard bundle's manifest lists (its exclusions already left out); Meta's by default."""
    listed = (bundle.manifest.guard or {}).get("categories")
    if not listed:
        return LLAMA_GUARD_3_1B_CATEGORIES
    return tuple(GuardCategory(str(c["code"]), str(c["name"]), str(c.get("description", ""))) for c in listed)


def to_turns(messages, where: str = "messages") -> list[Turn]:
    """OpenAI or Llama Stack messages as the Guard's alternating user/assistant turns: tool results count as
    the user's side, system messages are not judged, consecutive turns of one side are joined."""
    if not isinstance(messages, list) or not messages:
        raise bad(f"'{where}' must be a non-empty list of messages", where)
    turns: list[Turn] = []
    for number, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("system", "developer"):
            continue
        if role not in ROLES:
            raise bad(f"{where}[{number}] has role {role!r}", f"{where}[{number}].role")
        text = content_text(message.get("content"), f"{where}[{number}].content")
        if ROLES[role] == "assistant" and message.get("tool_calls"):
            text += _calls_text(message["tool_calls"])
        if turns and turns[-1].role == ROLES[role]:
            turns[-1] = Turn(ROLES[role], f"{turns[-1].content}\n\n{text}")
        else:
            turns.append(Turn(ROLES[role], text))
    while turns and turns[0].role == "assistant":
        turns.pop(0)
    if not turns:
        raise bad(f"'{where}' holds no user message to check", where)
    return turns


def content_text(content, where: str) -> str:
    """Text content: a string, a {"type": "text"} item or a list of them. Anything else (an image) is refused:
    this text-only Guard cannot judge it and must not pass it unjudged."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    items = content if isinstance(content, list) else [content]
    texts = []
    for item in items:
        if isinstance(item, str):
            texts.append(item)
        elif isinstance(item, dict) and item.get("type", "text") == "text" and isinstance(item.get("text"), str):
            texts.append(item["text"])
        else:
            raise bad(f"{where}: only text can be checked by this shield", where)
    return "".join(texts)


def _calls_text(calls) -> str:
    parts = []
    for call in calls if isinstance(calls, list) else []:
        function = call.get("function", call) if isinstance(call, dict) else {}
        parts.append(f"{function.get('name', '')}({dumps(function.get('arguments', {}), ensure_ascii=False)})")
    return "[" + ", ".join(parts) + "]" if parts else ""


# --- answers -------------------------------------------------------------------------------------------

def violation(verdict: Verdict) -> dict | None:
    """RunShieldResponse.violation: None when safe."""
    if verdict.safe:
        return None
    metadata = {"violation_type": verdict.violation_type, "categories": list(verdict.names),
                "p_unsafe": verdict.p_unsafe}
    if verdict.error:
        metadata["guard_reply"] = verdict.reply
    return {"violation_level": "error", "user_message": CANNED_RESPONSE, "metadata": metadata}


def moderation(model: str, verdicts: list[Verdict]) -> dict:
    return {"id": f"modr-{uuid.uuid4().hex}", "model": model, "results": [_result(v) for v in verdicts]}


def _result(verdict: Verdict) -> dict:
    flagged = {name for name, codes in OPENAI_CATEGORIES.items() if set(codes) & set(verdict.codes)}
    result = {"flagged": not verdict.safe,
              "categories": {name: name in flagged for name in OPENAI_CATEGORIES},
              "category_scores": {name: 1.0 if name in flagged else 0.0 for name in OPENAI_CATEGORIES},
              "category_applied_input_types": {name: ["text"] if name in flagged else [] for name in OPENAI_CATEGORIES},
              "metadata": {"p_unsafe": verdict.p_unsafe}}
    if not verdict.safe:
        result["user_message"] = CANNED_RESPONSE
        result["metadata"]["violation_type"] = list(verdict.codes) or ["unparseable"]
    return result
