"""Tool calling as Llama 3.2 does it (Meta's llama_models: llama3_2/text_prompt_format.md, "Zero shot
function calling"; llama3/tool_utils.py; llama3/chat_format.py).

- The tools go into the system turn: Meta's instruction text, then the functions as a JSON list
  (json.dumps, indent 4, Meta's shape {"name", "description", "parameters": {"type": "dict", "required",
  "properties"}}). OpenAI-style definitions ({"type": "function", "function": {...}}) are accepted and mapped.
- The model answers with a Python-style list of calls, `[get_weather(city="SF", metric="celsius")]`
  (Llama 3.2), or a JSON object `{"name": ..., "parameters": {...}}` (Llama 3.1's custom tool format); an
  optional leading <|python_tag|> is dropped. parse_reply reads either strictly into calls (a name and a
  JSON object of arguments). A reply that does not start like a call is text. One that starts like a call
  but is not a valid one (a tool that was not offered, an argument that is not a literal, a missing
  required argument, a reply that stops inside the call) is returned as text with `error` set: never an
  exception.
- An assistant message with "tool_calls" is rendered back in the Python-list form; a tool result is a
  "tool" turn (Llama 3's ipython role).

The Kotlin and Swift cores have the same formatter and parser (ToolCalling.kt, ToolCalling.swift), checked by
tests/vectors/tool_prompts.json and tests/vectors/tool_replies.json.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from llama_mobile.core.errors import ConfigError

# Meta's text, word for word (llama3_2/text_prompt_format.md).
TOOL_INSTRUCTIONS = (
    "You are an expert in composing functions. You are given a question and a set of possible functions.\n"
    "Based on the question, you will need to make one or more function/tool calls to achieve the purpose.\n"
    "If none of the function can be used, point it out. If the given question lacks the parameters required "
    "by the function,\nalso point it out. You should only return the function call in tools call sections.\n\n"
    "If you decide to invoke any of the function(s), you MUST put it in the format of "
    "[func_name1(params_name1=params_value1, params_name2=params_value2...), func_name2(params)]\n"
    "You SHOULD NOT include any other text in the response.\n\n"
    "Here is a list of functions in JSON format that you can invoke.\n\n"
)
PYTHON_TAG = "<|python_tag|>"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict  # Meta's shape: {"type": "dict", "required": [...], "properties": {...}}

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "parameters": self.parameters}


@dataclass
class ToolCall:
    name: str
    arguments: dict


@dataclass
class ParsedReply:
    text: str  # the reply as generated (without a leading <|python_tag|>)
    calls: list[ToolCall] = field(default_factory=list)
    error: str | None = None  # why a reply that looks like a call is not a valid one

    @property
    def is_call(self) -> bool:
        return bool(self.calls)

    def to_dict(self) -> dict:
        return {"text": self.text, "tool_calls": [{"name": c.name, "arguments": c.arguments} for c in self.calls],
                "error": self.error}


def read_tools(data) -> list[Tool]:
    """Tool definitions from JSON: a list of OpenAI-style {"type": "function", "function": {...}} or bare
    {"name", "description", "parameters"} objects. Problems are a ConfigError naming every one."""
    if isinstance(data, dict) and isinstance(data.get("tools"), list):
        data = data["tools"]
    if not isinstance(data, list):
        raise ConfigError("tools must be a JSON list of function definitions",
                          fix='write [{"type": "function", "function": {"name": ..., "parameters": {...}}}]')
    tools, problems = [], []
    for number, item in enumerate(data, start=1):
        spec = item.get("function") if isinstance(item, dict) and item.get("type") == "function" else item
        if not isinstance(spec, dict):
            problems.append(f"tool {number} is not an object")
            continue
        name, description, params = spec.get("name"), spec.get("description", ""), spec.get("parameters", {})
        if not isinstance(name, str) or not _NAME.match(name):
            problems.append(f"tool {number} has no valid name (letters, digits, _ . -)")
            continue
        if not isinstance(description, str):
            problems.append(f"tool {name}: description must be a string")
        if not isinstance(params, dict) or not isinstance(params.get("properties", {}), dict) \
                or not isinstance(params.get("required", []), list) \
                or not all(isinstance(r, str) for r in params.get("required", [])):
            problems.append(f"tool {name}: parameters must be a JSON schema object with properties and required")
            continue
        if any(t.name == name for t in tools):
            problems.append(f"tool {name} is defined twice")
        tools.append(Tool(name, description if isinstance(description, str) else "",
                          {"type": "dict", "required": list(params.get("required", [])),
                           "properties": dict(params.get("properties", {}))}))
    if problems:
        raise ConfigError(problems, fix="fix the tool definitions (OpenAI-style function JSON schema)")
    return tools


def tools_system_prompt(tools: list[Tool], system: str | None = None) -> str:
    """The system turn's content: Meta's instructions, the functions as JSON, then the caller's own system
    prompt after a blank line, if any."""
    listed = json.dumps([t.to_dict() for t in tools], indent=4, ensure_ascii=False)
    return TOOL_INSTRUCTIONS + listed + (f"\n\n{system}" if system else "")


def format_call(call: ToolCall | dict) -> str:
    """One call in Llama 3.2's Python-list form, as in an assistant turn of the history."""
    name, arguments = (call.name, call.arguments) if isinstance(call, ToolCall) else (call["name"], call["arguments"])
    return f"{name}({', '.join(f'{k}={_literal(v)}' for k, v in arguments.items())})"


def format_calls(calls) -> str:
    return "[" + ", ".join(format_call(c) for c in calls) + "]"


def _literal(value) -> str:
    """A Python literal (what the model writes): strings as JSON strings, True/False/None."""
    if value is True:
        return "True"
    if value is False:
        return "False"
    if value is None:
        return "None"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k), ensure_ascii=False)}: {_literal(v)}" for k, v in value.items()) + "}"
    raise ConfigError(f"a tool argument of type {type(value).__name__} cannot be written", fix="use JSON values")


def render_messages(messages: list[dict]) -> list[dict]:
    """Messages with "tool_calls" (assistant) as text in the Python-list form, and non-string tool results
    as JSON: what core.tokenizer.render_chat takes."""
    out = []
    for m in messages:
        if m.get("role") == "assistant" and m.get("tool_calls"):
            calls = m["tool_calls"]
            if not isinstance(calls, list) or not all(isinstance(c, dict) and isinstance(c.get("name"), str)
                                                      and isinstance(c.get("arguments", {}), dict) for c in calls):
                raise ConfigError("an assistant message's tool_calls must be [{\"name\": ..., \"arguments\": {...}}]",
                                  fix="write the calls as the model returned them")
            text = format_calls([{"name": c["name"], "arguments": c.get("arguments", {})} for c in calls])
            out.append({"role": "assistant", "content": (m.get("content") or "") + text})
        elif m.get("role") == "tool" and not isinstance(m.get("content"), str) and "content" in m:
            out.append({"role": "tool", "content": json.dumps(m["content"], ensure_ascii=False)})
        else:
            out.append(m)
    return out


def with_tools(messages: list[dict], tools: list[Tool]) -> list[dict]:
    """The conversation with the tools in its system turn (the caller's system prompt kept after them)."""
    if not tools:
        return messages
    system = messages[0]["content"] if messages and messages[0].get("role") == "system" else None
    rest = messages[1:] if system is not None else messages
    return [{"role": "system", "content": tools_system_prompt(tools, system)}, *rest]


# --- the reply ----------------------------------------------------------------------------------------

class _Invalid(Exception):
    pass


def parse_reply(reply: str, tools: list[Tool]) -> ParsedReply:
    """Calls, or text. Never raises."""
    text = reply[len(PYTHON_TAG):] if reply.startswith(PYTHON_TAG) else reply
    body = text.strip()
    names = {t.name: t for t in tools}
    try:
        if re.match(r"\[\s*[A-Za-z_][A-Za-z0-9_.\-]*\s*\(", body):
            calls = _PythonCalls(body).calls()
        elif body.startswith("{") and re.match(r'\{\s*"(name|type)"\s*:', body):
            calls = _json_call(body)
        else:
            return ParsedReply(text=text)
        for call in calls:
            _check(call, names)
    except _Invalid as exc:
        return ParsedReply(text=text, error=str(exc))
    return ParsedReply(text=text, calls=calls)


def _check(call: ToolCall, tools: dict[str, Tool]) -> None:
    tool = tools.get(call.name)
    if tool is None:
        raise _Invalid(f"the model called {call.name!r}, which is not one of the tools offered")
    missing = [r for r in tool.parameters["required"] if r not in call.arguments]
    if missing:
        raise _Invalid(f"{call.name}: missing required argument {missing[0]!r}")
    known = tool.parameters["properties"]
    unknown = [a for a in call.arguments if known and a not in known]
    if unknown:
        raise _Invalid(f"{call.name}: unknown argument {unknown[0]!r}")


def _json_call(body: str) -> list[ToolCall]:
    try:
        data = json.loads(body)
    except ValueError:
        raise _Invalid("the call is not valid JSON (or stops before its end)") from None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise _Invalid("a JSON call needs a \"name\"")
    arguments = data.get("parameters", data.get("arguments", {}))
    if not isinstance(arguments, dict):
        raise _Invalid(f"{data['name']}: the arguments are not a JSON object")
    return [ToolCall(data["name"], arguments)]


class _PythonCalls:
    """`[name(key=literal, ...), ...]` with Python literals (strings, numbers, True/False/None and
    true/false/null, lists, dicts with string keys); nothing else, nothing after the closing bracket."""

    def __init__(self, text: str):
        self.s, self.i = text, 0

    def fail(self, what: str):
        if self.i >= len(self.s):
            return _Invalid("the reply stops inside a tool call")
        return _Invalid(f"not a valid tool call: {what} at character {self.i}")

    def space(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in " \t\r\n":
            self.i += 1

    def expect(self, ch: str) -> None:
        self.space()
        if not self.s.startswith(ch, self.i):
            raise self.fail(f"expected {ch!r}")
        self.i += 1

    def peek(self) -> str:
        self.space()
        return self.s[self.i] if self.i < len(self.s) else ""

    def name(self) -> str:
        self.space()
        found = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*").match(self.s, self.i)
        if not found:
            raise self.fail("expected a name")
        self.i = found.end()
        return found.group()

    def calls(self) -> list[ToolCall]:
        out = []
        self.expect("[")
        while True:
            name = self.name()
            self.expect("(")
            arguments: dict = {}
            if self.peek() != ")":
                while True:
                    key = self.name()
                    self.expect("=")
                    if key in arguments:
                        raise self.fail(f"argument {key!r} given twice")
                    arguments[key] = self.value(key)
                    if self.peek() == ",":
                        self.i += 1
                        continue
                    break
            self.expect(")")
            out.append(ToolCall(name, arguments))
            if self.peek() == ",":
                self.i += 1
                continue
            break
        self.expect("]")
        self.space()
        if self.i != len(self.s):
            raise _Invalid(f"text after the tool calls at character {self.i}")
        return out

    def value(self, key: str):
        ch = self.peek()
        if ch in ("'", '"'):
            return self.string()
        if ch == "[":
            self.i += 1
            items = []
            if self.peek() == "]":
                self.i += 1
                return items
            while True:
                items.append(self.value(key))
                if self.peek() == ",":
                    self.i += 1
                    if self.peek() == "]":
                        self.i += 1
                        return items
                    continue
                self.expect("]")
                return items
        if ch == "{":
            self.i += 1
            obj: dict = {}
            if self.peek() == "}":
                self.i += 1
                return obj
            while True:
                if self.peek() not in ("'", '"'):
                    raise self.fail("expected a string key")
                k = self.string()
                self.expect(":")
                obj[k] = self.value(key)
                if self.peek() == ",":
                    self.i += 1
                    continue
                self.expect("}")
                return obj
        number = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?").match(self.s, self.i)
        if number and number.end() > self.i:
            self.i = number.end()
            text = number.group()
            return float(text) if any(c in text for c in ".eE") else int(text)
        for word, result in (("True", True), ("False", False), ("None", None),
                             ("true", True), ("false", False), ("null", None)):
            end = self.i + len(word)
            if self.s.startswith(word, self.i) and not (end < len(self.s) and (self.s[end].isalnum() or self.s[end] == "_")):
                self.i = end
                return result
        if self.i >= len(self.s):
            raise self.fail("")
        raise _Invalid(f"argument {key!r} is not a JSON or Python literal")

    def string(self) -> str:
        quote = self.s[self.i]
        self.i += 1
        out = []
        escapes = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "\\": "\\", "'": "'", '"': '"', "/": "/"}
        while True:
            if self.i >= len(self.s):
                raise self.fail("")
            ch = self.s[self.i]
            self.i += 1
            if ch == quote:
                return "".join(out)
            if ch == "\n":
                raise _Invalid("a string argument runs past the end of its line")
            if ch == "\\":
                if self.i >= len(self.s):
                    raise self.fail("")
                e = self.s[self.i]
                self.i += 1
                if e in escapes:
                    out.append(escapes[e])
                elif e == "u":
                    digits = self.s[self.i:self.i + 4]
                    if len(digits) < 4 and self.i + len(digits) >= len(self.s):
                        self.i = len(self.s)
                        raise self.fail("")
                    if not re.fullmatch(r"[0-9a-fA-F]{4}", digits):
                        raise _Invalid("a bad \\u escape in a string argument")
                    out.append(chr(int(digits, 16)))
                    self.i += 4
                else:
                    raise _Invalid(f"an unknown escape \\{e} in a string argument")
            else:
                out.append(ch)
