"""The shape every job shares: a request, stages reported through Progress, a typed result from run()."""
from __future__ import annotations

from typing import ClassVar

from llama_mobile.core.progress import Progress


class Job:
    STAGES: ClassVar[tuple[str, ...]]

    def __init__(self, request, progress: Progress | None = None):
        self.request = request
        self.progress = progress or Progress(self.STAGES)

    def run(self):
        raise NotImplementedError
