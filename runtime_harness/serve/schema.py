"""OpenAI's chat completion API as data: a request read strictly into a ChatRequest, and the response,
stream chunk and error bodies OpenAI's and Llama Stack's clients parse.

Everything a client may get wrong is an ApiError (an HTTP status and OpenAI's error shape) naming the
field; fields this server does not use (user, metadata, store, ...) are ignored, as OpenAI ignores them.
Messages become the shape of runtime_harness.chat / runtime_harness.tools: {"role", "content"} with
"tool_calls" as [{"name", "arguments": {...}}] on assistant turns.
"""
from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import ClassVar

from llama_mobile.core.errors import ConfigError
from llama_mobile.runtime_harness.chat import check_messages
from llama_mobile.runtime_harness.tools import Tool, read_tools

MAX_STOP_SEQUENCES = 4  # as OpenAI
MAX_STOP_LENGTH = 256
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


class ApiError(Exception):
    """An answer in OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""

    TYPES: ClassVar[dict[int, str]] = {400: "invalid_request_error", 401: "invalid_request_error", 404: "not_found_error",
             405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
             500: "server_error", 503: "service_unavailable"}

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def parse_json(raw: bytes) -> dict:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise bad(f"the body is not valid JSON ({getattr(exc, 'msg', type(exc).__name__)})",
                  code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad("the body must be a JSON object")
    return data


@dataclass
class ChatRequest:
    model: str
    messages: list[dict]  # checked, in runtime_harness.chat's shape
    tools: list[Tool] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logit_bias: dict[int, float] = field(default_factory=dict)


def parse_chat(data: dict) -> ChatRequest:
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise bad("'model' must be a model id (GET /v1/models lists them)", "model")
    if data.get("n", 1) != 1:
        raise bad("only n=1 is supported", "n")
    fmt = data.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise bad("only response_format {\"type\": \"text\"} is supported", "response_format")
    stream = _bool(data, "stream", False)
    options = data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad("'stream_options' must be an object", "stream_options")
    include_usage = bool(stream and options and options.get("include_usage") is True)
    max_tokens = data.get("max_completion_tokens", data.get("max_tokens"))
    if max_tokens is not None and (not _int(max_tokens) or max_tokens < 1):
        raise bad("'max_tokens' must be an integer >= 1", "max_tokens")
    temperature = _number(data, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(data, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0.0:
        raise bad("'top_p' must be > 0", "top_p")
    seed = data.get("seed")
    if seed is not None and not _int(seed):
        raise bad("'seed' must be an integer", "seed")
    tools = _tools(data)
    return ChatRequest(model=model, messages=_messages(data.get("messages")), tools=tools, stream=stream,
                       include_usage=include_usage, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                       seed=None if seed is None else seed % 2**63, stop=_stop(data.get("stop")),
                       logit_bias=_logit_bias(data.get("logit_bias")))


def _bool(data: dict, key: str, default: bool) -> bool:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(f"'{key}' must be true or false", key)
    return value


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(data: dict, key: str, default: float, low: float, high: float) -> float:
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise bad(f"'{key}' must be a number from {low:g} to {high:g}", key)
    return float(value)


def _stop(value) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or len(stops) > MAX_STOP_SEQUENCES or \
            not all(isinstance(s, str) and 0 < len(s) <= MAX_STOP_LENGTH for s in stops):
        raise bad(f"'stop' must be a string or a list of at most {MAX_STOP_SEQUENCES} non-empty strings", "stop")
    return tuple(stops)


def _logit_bias(value) -> dict[int, float]:
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > 1024:
        raise bad("'logit_bias' must map token ids to numbers from -100 to 100", "logit_bias")
    out = {}
    for key, bias in value.items():
        if not (isinstance(key, str) and key.isdigit()) or isinstance(bias, bool) or \
                not isinstance(bias, (int, float)) or not -100 <= bias <= 100:
            raise bad("'logit_bias' must map token ids to numbers from -100 to 100", "logit_bias")
        out[int(key)] = float(bias)
    return out


def _tools(data: dict) -> list[Tool]:
    tools, choice = data.get("tools"), data.get("tool_choice", "auto")
    if tools is None:
        return []
    try:
        offered = read_tools(tools)
    except ConfigError as exc:
        raise bad(f"bad tool definitions: {'; '.join(exc.problems)}", "tools") from None
    if choice in (None, "auto", "required"):
        return offered
    if choice == "none":
        return []
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    chosen = [t for t in offered if t.name == name]
    if not chosen:
        raise bad("'tool_choice' must be \"auto\", \"none\", \"required\" or one of the tools offered",
                  "tool_choice")
    return chosen


def _messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise bad("'messages' must be a non-empty list", "messages")
    out: list[dict] = []
    for number, message in enumerate(messages):
        where = f"messages[{number}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise bad(f"{where} needs a role: one of {', '.join(ROLES)}", where)
        role = ROLES[message["role"]]
        content = _text(message.get("content"), f"{where}.content")
        if role == "system" and out and out[-1]["role"] == "system" and len(out) == 1:
            out[-1]["content"] += "\n\n" + (content or "")  # leading system messages are one system turn
            continue
        item = {"role": role, "content": content}
        if role == "assistant" and message.get("tool_calls"):
            item["tool_calls"] = _tool_calls(message["tool_calls"], f"{where}.tool_calls")
            item["content"] = content or None
        elif content is None:
            raise bad(f"{where} has no content", f"{where}.content")
        out.append(item)
    if out[-1]["role"] == "assistant":
        raise bad("the last message is the assistant's: there is nothing to reply to", "messages")
    try:
        return check_messages(out)
    except ConfigError as exc:
        raise bad("; ".join(exc.problems), "messages") from None


def _text(content, where: str) -> str | None:
    """A string, or a list of text parts joined; other parts (images, audio, files) are refused."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad(f"{where}: only text parts are supported", where)
            texts.append(part["text"])
        return "".join(texts)
    raise bad(f"{where} must be a string or a list of text parts", where)


def _tool_calls(calls, where: str) -> list[dict]:
    if not isinstance(calls, list):
        raise bad(f"{where} must be a list", where)
    out = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad(f"{where}: each call needs function.name", where)
        arguments = function.get("arguments") or "{}"
        try:
            parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise bad(f"{where}: function.arguments must be a JSON object (as a string)", where)
        out.append({"name": function["name"], "arguments": parsed})
    return out


# --- responses ----------------------------------------------------------------------------------------

def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def tool_call_items(calls) -> list[dict]:
    """Parsed calls (runtime_harness.tools.ToolCall) as OpenAI's message.tool_calls."""
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)}} for c in calls]


def usage(prompt: int, completion: int, cached: int = 0) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def completion(cid: str, model: str, message: dict, finish: str, use: dict | None) -> dict:
    message = {"role": "assistant", "content": None, "refusal": None, **message}
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": use}


def chunk(cid: str, model: str, created: int, delta: dict | None, finish: str | None = None,
          use: dict | None = None) -> dict:
    """One stream event; delta None is the usage chunk (no choices), as OpenAI sends it."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
    body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices}
    if use is not None:
        body["usage"] = use
    return body
