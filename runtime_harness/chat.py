"""Multi-turn chat on one KV cache: each turn prefills only what is new.

A Conversation keeps the messages and how much of their rendering (core.tokenizer.render_chat) the
program's KV cache holds. A new turn renders the whole conversation, checks that the cached part is
still its beginning, and prefills the rest: the end of the previous reply (its stop token, which the
decode loop samples but never feeds), the new user or tool turns, and the assistant header. So the
time to the first token of turn N depends on the new message, not on the history.

Two engines hold the cache:
- ProgramEngine: a .pte stepped through forward(tokens, start_pos) (runtime_harness.program.Program).
- RunnerEngine: ExecuTorch's TextLLMRunner, which continues from its position until reset(); each
  generate() call gets the new text only (what the Android and iOS apps do with the same runner).

Context policy: when the history, the new turn and `reserve` tokens for the reply do not fit the context,
the oldest messages are dropped (a leading system message is always kept, and the kept history starts
with a user turn), and the kept conversation is prefilled again from an empty cache. fit_history is that
policy; the Kotlin and Swift cores have the same (ContextPolicy.kt, tests/vectors/chat_context.json).

A bundle exported with an attention sink (manifest runtime.attention_sink) has no end of context: its
cache is a ring that keeps the first tokens and the last window, so the engines are `sliding` and a turn
counts the cache as empty, as ExecuTorch's TextLLMRunner does for such programs. The conversation then
continues past the cache size without dropping anything; only a turn that must rebuild the cache (a cut
reply, a changed history) and does not fit it on its own falls back to the policy.
"""
from __future__ import annotations

import codecs
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from executorch.extension.llm.runner import GenerationConfig

from llama_mobile.core.errors import ConfigError, RuntimeFailure
from llama_mobile.core.tokenizer import ROLES, Tokenizer, conversation_template, render_chat
from llama_mobile.runtime_harness.generate import _capture_native_stdout, _stats

CONTEXT_POLICY = "drop-oldest"
DEFAULT_RESERVE = 64  # reply tokens a turn must leave room for (at most a quarter of the context)


@dataclass
class Reply:
    text: str
    finish: str  # "stop": a stop token; "length": max_new_tokens or the context ran out
    prompt_tokens: int  # tokens prefilled for this turn (the delta, or everything after a re-prefill)
    generated_tokens: int
    position: int  # tokens in the KV cache after the turn (with an attention sink: positions, past the cache)
    time_to_first_token_ms: float
    decode_tokens_per_s: float
    dropped_messages: int = 0  # dropped by the context policy so far
    reprefilled: bool = False  # the cache was rebuilt from an empty one for this turn
    token_ids: list[int] = field(default_factory=list)  # ProgramEngine only


def fit_history(template, messages: list, count: Callable[[str], int], budget: int) -> int:
    """The context policy: how many of the oldest messages to drop so that the rendered conversation
    (with the generation prompt) is at most `budget` tokens. A leading system message is kept; the kept
    rest starts with a user message and keeps the last message. Raises RuntimeFailure when even that
    is too long."""
    system = 1 if messages and _role(messages[0]) == "system" else 0
    rest = messages[system:]
    for drop in range(len(rest)):
        if drop and _role(rest[drop]) != "user" and drop != len(rest) - 1:
            continue
        kept = messages[:system] + rest[drop:]
        if count(render_chat(template, kept)) <= budget:
            return drop
    raise RuntimeFailure(f"the last message does not fit the context ({budget} tokens for the prompt)",
                         fix="send a shorter message or system prompt, or re-export with a larger --context")


def _role(message) -> str:
    return message["role"] if isinstance(message, dict) else message.role


def check_messages(messages) -> list[dict]:
    """A conversation read from JSON: a list of {"role": one of ROLES, "content": str}; problems are
    ConfigError (one line). An assistant message may carry "tool_calls" instead of content
    (runtime_harness.tools renders them)."""
    if not isinstance(messages, list):
        raise ConfigError("the conversation must be a JSON list of messages",
                          fix='write [{"role": "user", "content": "..."}]')
    checked = []
    for number, message in enumerate(messages, start=1):
        if not isinstance(message, dict):
            raise ConfigError(f"message {number} is not an object", fix='write {"role": ..., "content": ...}')
        role = message.get("role")
        if role not in ROLES:
            raise ConfigError(f"message {number} has role {role!r}", fix=f"use one of: {', '.join(ROLES)}")
        content = message.get("content")
        if (content is None and role == "assistant" and message.get("tool_calls")) or \
                (role == "tool" and content is not None and not isinstance(content, str)):
            checked.append(dict(message))  # tool calls / a JSON tool result: runtime_harness.tools renders them
            continue
        if not isinstance(content, str):
            raise ConfigError(f"message {number} ({role}) has no text content", fix='give it "content": "..."')
        if role == "system" and number != 1:
            raise ConfigError(f"message {number} is a system message after the first",
                              fix="put the system prompt first (one system message)")
        checked.append(dict(message))
    return checked


class ProgramEngine:
    """The KV cache of a Program; `position` tokens of it are valid (custom_sdpa ignores the rest)."""

    def __init__(self, program, tokenizer: Tokenizer, stop_ids: tuple[int, ...]):
        self.program, self.tokenizer, self.stop_ids = program, tokenizer, tuple(stop_ids)
        self.sliding = getattr(program, "attention_sink", None) is not None  # any position: no end of context
        self.ids: list[int] = []  # what the cache holds, position by position
        self.last_prefill_logits = None
        self.chunk = max(1, int(getattr(program, "max_seq_len", 0) or 1))

    @property
    def position(self) -> int:
        return len(self.ids)

    @property
    def context(self) -> int:
        return self.program.context_len

    def reset(self) -> None:
        self.ids = []

    def feed(self, ids: list[int]):
        logits = self.program.forward(torch.tensor([ids]), self.position)
        self.ids.extend(ids)
        return logits

    def prefill(self, ids: list[int]):
        logits = None
        for start in range(0, len(ids), self.chunk):
            piece = ids[start:start + self.chunk]
            logits = self.feed(piece)
        self.last_prefill_logits = logits
        return logits

    def run(self, ids: list[int], max_new_tokens: int, temperature: float,
            on_text: Callable[[str], None] | None, seed: int | None = None) -> tuple[str, list[int], str, float, float]:
        """Prefill `ids`, then sample until a stop token, max_new_tokens or the context's end. Every
        generated token except a stop token ends up in the cache."""
        started = time.perf_counter()
        logits = self.prefill(ids)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        out, pieces, finish = [], [], "length"
        first_ms = decode_start = None
        while True:
            token = _sample(logits, temperature, generator)
            if first_ms is None:
                first_ms = (time.perf_counter() - started) * 1000
                decode_start = time.perf_counter()
            if token in self.stop_ids:
                finish = "stop"
                break
            out.append(token)
            piece = decoder.decode(self.tokenizer.token_bytes(token))
            pieces.append(piece)
            if on_text and piece:
                on_text(piece)
            if self.position >= self.context and not self.sliding:  # no room: the cache ends before this token
                out.pop()
                pieces.pop()
                break
            logits = self.feed([token])
            if len(out) >= max_new_tokens:
                break
        tail = decoder.decode(b"", final=True)
        if tail and on_text:
            on_text(tail)
        decode_s = max(time.perf_counter() - decode_start, 1e-9)
        return "".join(pieces) + tail, out, finish, first_ms, len(out) / decode_s


def _sample(logits, temperature: float, generator) -> int:
    row = logits.reshape(-1).float()
    if temperature <= 0:
        return int(row.argmax())
    probs = torch.softmax(row / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


class RunnerEngine:
    """TextLLMRunner continuing from its position: generate() is called with the new text only.

    The runner feeds every generated token but the last one it samples, so after a reply that ended on
    a stop token the cache holds the reply without it (as ProgramEngine). A reply cut by max_new_tokens
    leaves its last token out of the cache: the conversation then rebuilds the cache on the next turn."""

    def __init__(self, runner, context: int):
        self.runner, self.context, self.position = runner, context, 0
        self.sliding = getattr(runner, "attention_sink", None) is not None  # the runner recycles the ring

    def reset(self) -> None:
        self.runner._runner.reset()
        self.position = 0

    def run_text(self, text: str, n_tokens: int, max_new_tokens: int, temperature: float,
                 on_text: Callable[[str], None] | None, hide: tuple[str, ...]) -> tuple[str, str, object]:
        config = GenerationConfig(echo=False, max_new_tokens=max_new_tokens, temperature=temperature,
                                  num_bos=0, num_eos=0)
        pieces, stats, streamed = [], [], [0, False]  # characters passed on; a stop token seen

        def emit(piece: str) -> None:
            # Raw pieces are kept (the stop token tells how the reply ended); the caller is streamed the reply
            # only: nothing from a stop token on, and a tail that could begin one is held back.
            pieces.append(piece)
            if not on_text or streamed[1]:
                return
            text = "".join(pieces)
            found = [text.find(h) for h in hide if h and h in text]
            end = min(found) if found else len(text) - max(
                (n for h in hide if h for n in range(min(len(h), len(text)), 0, -1) if h.startswith(text[-n:])),
                default=0)
            if end > streamed[0]:
                on_text(text[streamed[0]:end])
                streamed[0] = end
            streamed[1] = bool(found)

        try:
            with _capture_native_stdout(emit, ()):
                self.runner._runner.generate(text, config, None, stats.append)
        except RuntimeError as exc:
            raise RuntimeFailure(f"generation failed ({exc})", fix="check the conversation fits the context") from None
        if not stats:
            raise RuntimeFailure("the runner returned no statistics", fix="re-export the bundle")
        printed = "".join(pieces)
        if on_text and not streamed[1] and len(printed) > streamed[0]:
            on_text(printed[streamed[0]:])  # a held-back tail that was no stop token after all
        generated = stats[-1].num_generated_tokens
        # A reply cut by max_new_tokens has fed max_new_tokens - 1 tokens (its last one is only sampled);
        # fewer means a stop token ended it. Exactly that many is ambiguous: the caller rebuilds the cache.
        # The runner prints the stop token, then a newline of its own: the reply ends before the stop token.
        ends = [printed.rfind(h) for h in hide if h and printed.rstrip().endswith(h)]
        stopped = bool(ends) or generated < max_new_tokens - 1
        if ends:
            printed = printed[:max(ends)]
        for h in hide:
            printed = printed.replace(h, "")
        # Measured on TextLLMRunner (tests/test_chat.py): num_generated_tokens counts the fed ones.
        self.position += n_tokens + generated
        return printed, "stop" if stopped else "length", _stats(stats[-1])


class Conversation:
    """Messages plus the KV cache that holds their rendering's beginning."""

    def __init__(self, engine, tokenizer: Tokenizer, template, *, system: str | None = None,
                 reserve: int = DEFAULT_RESERVE, stop_names: tuple[str, ...] = ()):
        self.engine, self.tokenizer = engine, tokenizer
        self.template = conversation_template(template)
        self.reserve = max(1, min(reserve, engine.context // 4))
        self.stop_names = stop_names
        self.messages: list[dict] = []
        self.first = 0  # messages before this one were dropped by the context policy
        self.cached_text = ""  # the rendered conversation's beginning that the cache holds
        self.dropped = 0
        self._stale = False
        self.reset(system)

    def reset(self, system: str | None = None) -> None:
        """An empty conversation (with this system prompt, or the template's default)."""
        self.messages = [{"role": "system", "content": system}] if system is not None else []
        self.first, self.dropped, self.cached_text, self._stale = 0, 0, "", False
        self.engine.reset()

    def load(self, messages: list[dict]) -> None:
        """A whole conversation (checked, tool calls rendered as text) in place of this one; empty cache."""
        self.reset()
        self.messages = [{"role": m["role"], "content": m["content"]} for m in messages]

    @property
    def window(self) -> list[dict]:
        """The messages the model sees: a leading system message and the messages from `first` on."""
        head = self.messages[:1] if self.messages and self.messages[0]["role"] == "system" else []
        return head + self.messages[max(self.first, len(head)):]

    def add(self, role: str, content: str) -> None:
        if role not in ROLES or role == "system":
            raise ConfigError(f"cannot add a {role!r} message to a conversation",
                              fix="add user or tool messages; set the system prompt with reset(system)")
        self.messages.append({"role": role, "content": content})

    def reply(self, max_new_tokens: int = 128, temperature: float = 0.0,
              on_text: Callable[[str], None] | None = None, seed: int | None = None) -> Reply:
        """Generate the assistant's reply to the messages added since the last one."""
        if not self.messages or self.messages[-1]["role"] == "assistant":
            raise ConfigError("nothing to reply to", fix="add a user message first")
        rendered = render_chat(self.template, self.window)
        reprefilled = False
        delta_text = rendered[len(self.cached_text):]
        if self._stale or not rendered.startswith(self.cached_text) or not self.cached_text:
            delta_text, reprefilled = rendered, True
        delta = self.tokenizer.encode(delta_text)
        held = 0 if reprefilled or self.engine.sliding else self.engine.position  # a ring counts as empty
        if held + len(delta) + self.reserve > self.engine.context:
            budget = self.engine.context - self.reserve
            drop = fit_history(self.template, self.window, lambda text: len(self.tokenizer.encode(text)), budget)
            self._drop(drop)
            rendered = render_chat(self.template, self.window)
            delta_text, reprefilled = rendered, True
            delta = self.tokenizer.encode(delta_text)
        if reprefilled:
            self.engine.reset()
        room = self.engine.context - (0 if self.engine.sliding else self.engine.position) - len(delta)
        max_new = max(1, min(max_new_tokens, room))
        if isinstance(self.engine, RunnerEngine):
            text, finish, stats = self.engine.run_text(delta_text, len(delta), max_new, temperature, on_text,
                                                       self.stop_names)
            # The runner counts the tokens it fed; a reply cut by the limit has one more, only sampled.
            ids, first_ms, decode_tps = [], stats.time_to_first_token_ms, stats.decode_tokens_per_s
            generated = stats.generated_tokens + (0 if finish == "stop" else 1)
            self._stale = finish != "stop"
        else:
            text, ids, finish, first_ms, decode_tps = self.engine.run(delta, max_new, temperature, on_text, seed)
            generated = len(ids)
            self._stale = False
        self.messages.append({"role": "assistant", "content": text})
        # The cache holds the rendering up to the reply's text; its end (the stop token) comes next turn.
        self.cached_text = rendered + text
        return Reply(text=text, finish=finish, prompt_tokens=len(delta), generated_tokens=generated,
                     position=self.engine.position, time_to_first_token_ms=first_ms, decode_tokens_per_s=decode_tps,
                     dropped_messages=self.dropped, reprefilled=reprefilled, token_ids=ids)

    def _drop(self, count: int) -> None:
        if count:
            head = 1 if self.messages and self.messages[0]["role"] == "system" else 0
            self.first = max(self.first, head) + count
            self.dropped += count
