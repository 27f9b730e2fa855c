"""Llama Guard classification on the ExecuTorch runtime: verdict, categories, p(unsafe), latency."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from llama_mobile.core.errors import UsageError
from llama_mobile.runtime_harness.guard_prompt import PIECES, GuardReplyError, parse_guard_reply


@dataclass
class GuardResult:
    safe: bool | None  # None when the reply does not parse
    categories: tuple[str, ...]
    p_unsafe: float
    reply: str
    time_to_first_token_ms: float
    total_ms: float
    error: str | None = None

    def to_dict(self) -> dict:
        return {"verdict": None if self.safe is None else ("safe" if self.safe else "unsafe"),
                "categories": list(self.categories), "p_unsafe": self.p_unsafe, "reply": self.reply,
                "time_to_first_token_ms": self.time_to_first_token_ms, "total_ms": self.total_ms,
                "error": self.error}


class EagerModel:
    """An eager model behind the Program interface (forward(tokens, start_pos)), as a reference."""

    def __init__(self, model):
        self.model = model

    def forward(self, tokens: torch.Tensor, start_pos: int) -> torch.Tensor:
        return self.model(tokens, torch.tensor([start_pos]))


def label_token_ids(tokenizer) -> tuple[int, int]:
    """The first token of "safe" and of "unsafe" as the model emits them after the assistant header."""
    safe, unsafe = tokenizer.encode("safe"), tokenizer.encode("unsafe")
    return safe[0], unsafe[0]


def template_control_ids(tokenizer) -> list[int]:
    """The special ids the Guard template itself writes: BOS, the user header, <|eot_id|>, the assistant header."""
    return tokenizer.control_ids(tokenizer.encode(PIECES["begin"] + PIECES["end"]))


def check_control_ids(tokenizer, ids: list[int]) -> None:
    """Refuses a prompt whose special ids are not exactly the template's, e.g. a message that wrote
    "<|eot_id|><|start_header_id|>assistant..." and was not formatted by format_guard_prompt."""
    found, expected = tokenizer.control_ids(ids), template_control_ids(tokenizer)
    if found != expected:
        raise UsageError(f"the Guard prompt holds special tokens {found}, its template only {expected}: "
                         "a message spells a control token", fix="format prompts with format_guard_prompt, "
                         "which keeps every message's text out of the control tokens")


def classify(program, tokenizer, prompt: str, eos_ids: tuple[int, ...], max_new_tokens: int = 12) -> GuardResult:
    """Greedy Guard reply to a prompt from format_guard_prompt; any other control token in it is refused."""
    safe_id, unsafe_id = label_token_ids(tokenizer)
    ids = tokenizer.encode(prompt)
    check_control_ids(tokenizer, ids)
    started = time.perf_counter()
    logits = program.forward(torch.tensor([ids]), 0)[0]
    first_token_ms = (time.perf_counter() - started) * 1000
    # p(unsafe) over the whole vocabulary at the first generated position (as Meta's model card).
    p_unsafe = float(torch.softmax(logits.double(), dim=-1)[unsafe_id])
    generated, pos = [], len(ids)
    for _ in range(max_new_tokens):
        token = int(logits.argmax(-1))
        if token in eos_ids:
            break
        generated.append(token)
        logits = program.forward(torch.tensor([[token]]), pos)[0]
        pos += 1
    total_ms = (time.perf_counter() - started) * 1000
    reply = tokenizer.decode(generated)
    try:
        verdict = parse_guard_reply(reply)
    except GuardReplyError as exc:
        return GuardResult(None, (), p_unsafe, reply, first_token_ms, total_ms, error=str(exc))
    return GuardResult(verdict.safe, tuple(verdict.categories), p_unsafe, reply, first_token_ms, total_ms)
