"""Generation through ExecuTorch's TextLLMRunner: the C++ runner the Android and iOS apps use."""
from __future__ import annotations

import codecs
import contextlib
import ctypes
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llama_mobile.core.bundle import Bundle
from llama_mobile.core.errors import RuntimeFailure
from llama_mobile.core.manifest import AttentionSink
from llama_mobile.runtime_harness.host import refuse_off_macos
from llama_mobile.runtime_harness.program import check_loads, load_runtime_ops, quiet_native_stderr


@dataclass
class GenerationStats:
    prompt_tokens: int
    generated_tokens: int
    time_to_first_token_ms: float
    prefill_tokens_per_s: float
    decode_tokens_per_s: float


@dataclass
class Generation:
    text: str
    stats: GenerationStats


def _stats(raw) -> GenerationStats:
    prefill_ms = max(raw.prompt_eval_end_ms - raw.inference_start_ms, 1)
    decode_ms = max(raw.inference_end_ms - raw.prompt_eval_end_ms, 1)
    decoded = max(raw.num_generated_tokens - 1, 0)  # the first token comes out of prefill
    return GenerationStats(
        prompt_tokens=raw.num_prompt_tokens,
        generated_tokens=raw.num_generated_tokens,
        time_to_first_token_ms=float(raw.first_token_ms - raw.inference_start_ms),
        prefill_tokens_per_s=raw.num_prompt_tokens * 1000.0 / prefill_ms,
        decode_tokens_per_s=decoded * 1000.0 / decode_ms,
    )


class Runner:
    def __init__(self, program: Path, tokenizer: Path, weights: Path | None = None, *,
                 attention_sink: AttentionSink | None = None):
        """attention_sink: the manifest's runtime.attention_sink. TextLLMRunner (ExecuTorch 1.5.1) takes a
        program whose max_seq_len is below its max_context_len as a sliding window: it runs past the cache
        size, bounding one call's prompt and its new tokens by max_context_len (text_llm_runner.cpp)."""
        self.attention_sink = attention_sink
        check_loads(program, weights)  # a damaged program must not crash this process
        load_runtime_ops()
        from executorch.extension.llm.runner import TextLLMRunner

        try:
            with quiet_native_stderr():
                self._runner = TextLLMRunner(str(program), str(tokenizer), str(weights) if weights else None)
        except RuntimeError as exc:
            raise RuntimeFailure(f"TextLLMRunner cannot load the bundle ({exc})", path=program,
                                 fix="re-export the bundle with this llama-mobile version") from None

    @classmethod
    def of(cls, bundle: Bundle, adapter: str | None = None) -> Runner:
        """The bundle's program, or LoRA adapter ``adapter``'s, over the bundle's weights file."""
        refuse_off_macos(bundle)
        program = bundle.program if adapter is None else bundle.adapter_program(adapter)
        return cls(program, bundle.tokenizer, bundle.weights,
                   attention_sink=bundle.manifest.runtime.attention_sink)

    def generate(self, prompt: str, *, max_new_tokens: int, temperature: float = 0.0,
                 on_text: Callable[[str], None] | None = None, hide: tuple[str, ...] = ()) -> Generation:
        """hide: token texts left out of the stream (the end-of-turn token the runner prints last)."""
        from executorch.extension.llm.runner import GenerationConfig

        # The runner continues from its last position until reset(): every call starts fresh.
        self._runner.reset()
        config = GenerationConfig(echo=False, max_new_tokens=max_new_tokens, temperature=temperature,
                                  num_bos=0, num_eos=0)
        pieces: list[str] = []

        def emit(text: str) -> None:
            pieces.append(text)
            if on_text:
                on_text(text)

        stats: list = []
        # The Python token callback receives each piece as a str, and pybind11 raises on a piece
        # that ends inside a multi-byte character. The runner also writes every piece to its C
        # stdout, so that byte stream is read instead, through an incremental UTF-8 decoder.
        try:
            with _capture_native_stdout(emit, hide):
                self._runner.generate(prompt, config, None, stats.append)
        except RuntimeError as exc:
            raise RuntimeFailure(f"generation failed ({exc})", fix="check the prompt fits the context") from None
        if not stats:
            raise RuntimeFailure("the runner returned no statistics", fix="re-export the bundle")
        return Generation(text="".join(pieces), stats=_stats(stats[-1]))


@contextlib.contextmanager
def _capture_native_stdout(emit: Callable[[str], None], hide: tuple[str, ...] = ()):
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    libc.fflush(None)
    read_fd, write_fd = os.pipe()
    saved = os.dup(1)
    os.dup2(write_fd, 1)
    os.close(write_fd)
    # Python code that prints while the runner's stdout is captured (the caller streaming text)
    # must still reach the real stdout, not the pipe.
    python_stdout = sys.stdout
    sys.stdout = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="replace")

    def pump() -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        report = _ReportFilter(emit, hide)
        with os.fdopen(read_fd, "rb", buffering=0) as stream:
            while chunk := stream.read(4096):
                report.feed(decoder.decode(chunk))
        report.feed(decoder.decode(b"", final=True))
        report.close()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        yield
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)
        reader.join(timeout=10)
        sys.stdout.close()
        sys.stdout = python_stdout


class _ReportFilter:
    """Passes generated text on as it streams, without the stats line the runner prints at the end
    and without the token texts in `hide`. A tail that could begin one of them is held back."""

    MARKER = "\nPyTorchObserver"

    def __init__(self, emit: Callable[[str], None], hide: tuple[str, ...] = ()):
        self.emit, self.hide, self.pending, self.done = emit, tuple(h for h in hide if h), "", False

    def feed(self, text: str) -> None:
        if self.done or not text:
            return
        self.pending += text
        for token in self.hide:
            self.pending = self.pending.replace(token, "")
        cut = self.pending.find(self.MARKER)
        if cut >= 0:
            self._flush(self.pending[:cut])
            self.done = True
            return
        keep = max((self._prefix_overlap(marker) for marker in (self.MARKER, *self.hide)), default=0)
        self._flush(self.pending[: len(self.pending) - keep])
        self.pending = self.pending[len(self.pending) - keep:]

    def _prefix_overlap(self, marker: str) -> int:
        return next((n for n in range(min(len(marker), len(self.pending)), 0, -1)
                     if marker.startswith(self.pending[-n:])), 0)

    def close(self) -> None:
        if not self.done:
            self._flush(self.pending)

    def _flush(self, text: str) -> None:
        if text:
            self.emit(text)
