"""Stage-by-stage progress for long work: library code reports, the CLI decides where it goes."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from llama_mobile.core.memory import peak_rss_bytes


@dataclass
class Progress:
    stages: tuple[str, ...]
    emit: Callable[[str], None] = lambda line: None
    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def stage(self, name: str, detail: str = "") -> Iterator[None]:
        index = self.stages.index(name) + 1 if name in self.stages else 0
        self.emit(f"[{index}/{len(self.stages)}] {name}{': ' + detail if detail else ''} ...")
        started = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - started, 2)
        self.emit(f"[{index}/{len(self.stages)}] {name} done in {self.seconds[name]:.1f}s "
                  f"(peak RSS {peak_rss_bytes() / 2**30:.2f} GiB)")

    def note(self, line: str) -> None:
        self.emit("      " + line)
