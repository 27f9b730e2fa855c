"""One reply from a bundle's program: the prompt's tokens through the KV cache, then sampling until a stop
token, a stop sequence, max_tokens, the context's end, or a cancellation.

The program (runtime_harness.program.Program, the .pte on the ExecuTorch runtime) keeps one KV cache,
and consecutive requests often share a beginning (a system prompt, the conversation so far). Reusing the
cache must not change a reply, and the ExecuTorch kernels give slightly different numbers for a position
depending on the batch it was computed in (SmolLM2 8da4w: logits differ by up to 1.8 between a 34-token
prefill and 33 + 1 or 16 + 18 tokens, which changes greedy replies; two identical call sequences agree bit
for bit). So a prompt is always prefilled in the same calls, blocks of BLOCK tokens at absolute positions
0, BLOCK, 2*BLOCK, ..., and a new request reuses only the leading full blocks of the previous prompts that
hold its own tokens (`cached_tokens` in the usage): a reply is the same whatever ran before it. Tokens
written by decoding, or a prompt's last partial block, are computed again.

Not thread-safe: one thread (the engine's worker) calls generate().
"""
from __future__ import annotations

import codecs
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from llama_mobile.core.bundle import Bundle
from llama_mobile.core.tokenizer import Tokenizer
from llama_mobile.runtime_harness.program import Program

BLOCK = 32  # prefill call size; SmolLM2 8da4w over 448 tokens: as fast as 256-token calls, 16 is 2x slower


class PromptTooLong(Exception):
    def __init__(self, tokens: int, context: int):
        super().__init__(f"the prompt is {tokens} tokens; the model's context is {context}")
        self.tokens, self.context = tokens, context


@dataclass(frozen=True)
class Sampling:
    max_tokens: int | None = None  # None: up to the context's end
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logit_bias: dict[int, float] = field(default_factory=dict)


@dataclass
class Output:
    text: str
    finish: str  # "stop" (stop token or sequence), "length", "cancelled"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int  # prompt tokens the KV cache already held
    time_to_first_token_ms: float
    seconds: float


class StopScanner:
    """Text out as it streams, cut before the first stop sequence; a tail that could begin one is held."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops, self.pending, self.hit = stops, "", False

    def feed(self, text: str) -> str:
        if self.hit:
            return ""
        self.pending += text
        found = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if found:
            self.hit = True
            out, self.pending = self.pending[:min(found)], ""
            return out
        keep = max((n for s in self.stops for n in range(min(len(s) - 1, len(self.pending)), 0, -1)
                    if s.startswith(self.pending[-n:])), default=0)
        out, self.pending = self.pending[:len(self.pending) - keep], self.pending[len(self.pending) - keep:]
        return out

    def flush(self) -> str:
        out, self.pending = ("" if self.hit else self.pending), ""
        return out


class TextModel:
    """A chat bundle's program, tokenizer and stop tokens, and what its KV cache holds."""

    def __init__(self, bundle: Bundle):
        self.bundle = bundle
        self.tokenizer = Tokenizer(bundle.tokenizer)
        self.program = Program.of(bundle)
        self.context = self.program.context_len
        self.block = max(1, min(BLOCK, int(self.program.max_seq_len or 1)))
        self.stop_ids = frozenset(bundle.stop_ids)
        self._ids: list[int] = []  # the token at each valid position of the KV cache
        self._exact = 0  # leading positions written by full prefill blocks: what a new prompt may reuse

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def _forward(self, ids: list[int]) -> torch.Tensor:
        try:
            logits = self.program.forward(torch.tensor([ids]), len(self._ids))
        except BaseException:
            self._ids, self._exact = [], 0  # what the cache holds is no longer known
            raise
        self._ids.extend(ids)
        return logits

    def _prefill(self, ids: list[int]) -> tuple[torch.Tensor, int]:
        """The prompt's last logits, and how many of its tokens were already in the cache."""
        common, limit = 0, min(self._exact, len(ids) - 1)  # at least one token is fed: its logits are needed
        while common < limit and self._ids[common] == ids[common]:
            common += 1
        reuse = common - common % self.block
        del self._ids[reuse:]
        self._exact = reuse
        logits = None
        for start in range(reuse, len(ids), self.block):
            piece = ids[start:start + self.block]
            logits = self._forward(piece)
            if len(piece) == self.block and self._exact == start:
                self._exact += self.block
        return logits, reuse

    def generate(self, prompt: str, sampling: Sampling, on_text: Callable[[str], None] | None = None,
                 should_stop: Callable[[], bool] = lambda: False, on_prompt: Callable[[int], None] | None = None
                 ) -> Output:
        """on_prompt(tokens) is called once the prompt is known to fit, before any token is generated."""
        started = time.perf_counter()
        ids = self.encode(prompt)
        if not ids or len(ids) >= self.context:
            raise PromptTooLong(len(ids), self.context)
        room = self.context - len(ids)
        limit = room if sampling.max_tokens is None else min(sampling.max_tokens, room)
        if on_prompt:
            on_prompt(len(ids))
        logits, common = self._prefill(ids)
        generator = torch.Generator().manual_seed(sampling.seed if sampling.seed is not None
                                                  else random.getrandbits(63))
        bias = _bias(sampling.logit_bias, logits.shape[-1])
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        scanner = StopScanner(sampling.stop)
        pieces: list[str] = []
        produced, finish, first_ms = 0, "length", None

        def emit(text: str) -> None:
            if text:
                pieces.append(text)
                if on_text:
                    on_text(text)

        while produced < limit:
            if should_stop():
                finish = "cancelled"
                break
            token = sample(logits, sampling.temperature, sampling.top_p, generator, bias)
            if first_ms is None:
                first_ms = (time.perf_counter() - started) * 1000
            if token in self.stop_ids:
                finish = "stop"
                break
            produced += 1
            emit(scanner.feed(decoder.decode(self.tokenizer.token_bytes(token))))
            if scanner.hit:
                finish = "stop"
                break
            if produced < limit:  # the last token is only sampled: nothing would read its logits
                logits = self._forward([token])
        emit(scanner.feed(decoder.decode(b"", final=True)))
        emit(scanner.flush())
        return Output(text="".join(pieces), finish=finish, prompt_tokens=len(ids), completion_tokens=produced,
                      cached_tokens=common, time_to_first_token_ms=first_ms or 0.0,
                      seconds=time.perf_counter() - started)


def _bias(logit_bias: dict[int, float], vocab: int) -> torch.Tensor | None:
    if not logit_bias:
        return None
    bias = torch.zeros(vocab)
    for token, value in logit_bias.items():
        if 0 <= token < vocab:
            bias[token] = value
    return bias


def sample(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator,
           bias: torch.Tensor | None = None) -> int:
    row = logits.reshape(-1).float()
    if bias is not None:
        row = row + bias
    if temperature <= 0:
        return int(row.argmax())
    probs = torch.softmax(row / temperature, dim=-1)
    if top_p < 1.0:
        ordered, order = probs.sort(descending=True)
        keep = ordered.cumsum(0) - ordered < top_p  # the smallest set whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter_(0, order[keep], ordered[keep])
    return int(torch.multinomial(probs, 1, generator=generator))
