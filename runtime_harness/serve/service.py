"""What the HTTP routes serve: the chat model and the shields, each program behind its own Engine, and the
plumbing between a request and a job (queue refusals, a client that goes away, errors as API errors)."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from llama_mobile.core.errors import LlamaMobileError
from llama_mobile.core.memory import resident_bytes
from llama_mobile.runtime_harness.guard_prompt import Turn
from llama_mobile.runtime_harness.serve.engine import Cancelled, Engine, Job, QueueFull, ShuttingDown
from llama_mobile.runtime_harness.serve.generation import PromptTooLong, TextModel
from llama_mobile.runtime_harness.serve.safety import GuardShield, Verdict
from llama_mobile.runtime_harness.serve.schema import ApiError

log = logging.getLogger("llama_mobile.serve")
GUARD_CHAT = ("off", "input", "output", "both")


class ClientGone(Exception):
    """The client disconnected while its request waited or ran; the job was cancelled."""


class Service:
    def __init__(self, model: TextModel, shields: list[GuardShield] = (), *, queue_size: int = 8,
                 guard_chat: str = "off", max_body: int = 1 << 20, grace: float = 10.0):
        if guard_chat not in GUARD_CHAT or (guard_chat != "off" and not shields):
            raise ValueError(f"guard_chat {guard_chat!r} needs one of {GUARD_CHAT} and a shield")
        self.model, self.model_id = model, model.bundle.path.name
        self.engine = Engine(self.model_id, queue_size)
        self.shields = {s.identifier: s for s in shields}
        self.shield_engines = {s.identifier: Engine(s.identifier, queue_size) for s in shields}
        self.chat_shield = shields[0].identifier if shields else None
        self.guard_input = guard_chat in ("input", "both")
        self.guard_output = guard_chat in ("output", "both")
        self.max_body, self.grace = max_body, grace
        self.created = int(time.time())
        self.shutting_down = False

    def engines(self) -> dict[str, Engine]:
        return {self.model_id: self.engine, **self.shield_engines}

    def health(self) -> dict:
        return {"status": "shutting_down" if self.shutting_down else "ok", "model": self.model_id,
                "shields": list(self.shields), "guard_chat": {"input": self.guard_input, "output": self.guard_output},
                "engines": {name: engine.status() for name, engine in self.engines().items()},
                "rss_bytes": resident_bytes()}

    def submit(self, engine: Engine, fn: Callable[[Job], Any]) -> Job:
        job = Job(fn, asyncio.get_running_loop())
        try:
            engine.submit(job)
        except QueueFull as exc:
            raise ApiError(429, f"the server is busy ({engine.queue_size} requests are waiting); retry later",
                           code="queue_full", headers={"Retry-After": str(exc.retry_after)}) from None
        except ShuttingDown:
            raise ApiError(503, "the server is shutting down", code="shutting_down") from None
        return job

    async def check(self, shield_id: str, turns: list[Turn], watcher: asyncio.Future | None = None) -> Verdict:
        shield = self.shields[shield_id]
        job = self.submit(self.shield_engines[shield_id], lambda job: shield.check(turns))
        while True:
            kind, value = await next_event(job, watcher)
            if kind == "done":
                return value
            if kind == "error":
                raise api_error(value)

    def begin_shutdown(self) -> None:
        """SIGTERM/SIGINT: refuse new work, answer what waits, let what runs finish within `grace`."""
        self.shutting_down = True
        for engine in self.engines().values():
            engine.begin_shutdown(self.grace)

    def close(self) -> None:
        for engine in self.engines().values():
            engine.begin_shutdown(0.0)
            engine.close(timeout=self.grace + 5)


async def next_event(job: Job, watcher: asyncio.Future | None) -> tuple[str, Any]:
    """The job's next event; ClientGone (and the job cancelled) if the watcher sees the client leave first."""
    if watcher is None:
        return await job.events.get()
    getter = asyncio.ensure_future(job.events.get())
    done, _ = await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
    if getter in done:
        return getter.result()
    getter.cancel()
    job.cancel()
    raise ClientGone()


def disconnect_watcher(receive) -> asyncio.Future:
    """Completes when the client disconnects (the request body must have been read already)."""
    async def watch():
        while (await receive())["type"] != "http.disconnect":
            pass
    return asyncio.ensure_future(watch())


def api_error(exc: BaseException) -> ApiError:
    """A job's failure as the answer a client gets."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, PromptTooLong):
        return ApiError(400, f"{exc}: shorten the conversation", param="messages", code="context_length_exceeded")
    if isinstance(exc, ShuttingDown):
        return ApiError(503, "the server is shutting down", code="shutting_down")
    if isinstance(exc, Cancelled):
        return ApiError(499, "the request was cancelled", code="cancelled")
    if isinstance(exc, LlamaMobileError):
        log.error("the program failed: %s", exc)
        return ApiError(500, f"the model failed to run: {exc}", code="runtime_error")
    log.error("unexpected error in a job", exc_info=exc)
    return ApiError(500, f"internal error ({type(exc).__name__})", code="internal_error")
