"""One worker thread per program, fed by a bounded queue: the ExecuTorch program keeps a single KV cache,
so its requests run one at a time, in order.

A Job wraps a function that the worker runs; what it reports (the prompt size, text as it streams, the
result or an error) arrives on an asyncio queue in the server's event loop. A full queue refuses at once
(QueueFull, with a Retry-After estimate) instead of letting clients pile up. A job can be cancelled at any
time (its client went away): a waiting job is skipped, a running one stops at its next token.

Shutdown: begin_shutdown() refuses new jobs, answers every waiting one with ShuttingDown, and gives the
running one `grace` seconds before asking it to stop; close() then joins the worker.
"""
from __future__ import annotations

import asyncio
import collections
import math
import threading
import time
from collections.abc import Callable
from typing import Any


class QueueFull(Exception):
    def __init__(self, retry_after: int):
        super().__init__(f"the queue is full; retry in {retry_after} s")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    def __init__(self):
        super().__init__("the server is shutting down")


class Cancelled(Exception):
    pass


class Job:
    def __init__(self, fn: Callable[[Job], Any], loop: asyncio.AbstractEventLoop):
        self.fn, self.loop = fn, loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.engine: Engine | None = None
        self.enqueued_at = time.monotonic()
        self.started_at: float | None = None

    def emit(self, kind: str, value: Any = None) -> None:
        """From the worker thread: ("prompt", tokens), ("text", piece), ("done", result), ("error", exc)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is closed: nobody is listening
            pass

    def cancel(self) -> None:
        self.cancelled.set()

    def should_stop(self) -> bool:
        return self.cancelled.is_set() or (self.engine is not None and self.engine.past_deadline())

    @property
    def queue_ms(self) -> float:
        return ((self.started_at or time.monotonic()) - self.enqueued_at) * 1000


class Engine:
    def __init__(self, name: str, queue_size: int):
        self.name, self.queue_size = name, queue_size
        self._queue: collections.deque[Job] = collections.deque()
        self._lock = threading.Condition()
        self._closing = False
        self._deadline: float | None = None
        self._running: Job | None = None
        self._seconds_per_job = 1.0  # a running average, for Retry-After
        self.counts = collections.Counter()
        self._thread = threading.Thread(target=self._work, name=f"engine-{name}", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._lock:
            if self._closing:
                self.counts["refused_shutting_down"] += 1
                raise ShuttingDown()
            if len(self._queue) >= self.queue_size:
                self.counts["rejected"] += 1
                raise QueueFull(self.retry_after())
            job.engine = self
            self._queue.append(job)
            self.counts["accepted"] += 1
            self._lock.notify()

    def retry_after(self) -> int:
        waiting = len(self._queue) + (self._running is not None)
        return max(1, min(60, math.ceil(self._seconds_per_job * waiting)))

    def past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() > self._deadline

    def status(self) -> dict:
        with self._lock:
            return {"queued": len(self._queue), "running": int(self._running is not None),
                    "queue_size": self.queue_size, **{k: self.counts[k] for k in sorted(self.counts)}}

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._lock.wait()
                if not self._queue:
                    return
                job = self._queue.popleft()
                self._running = job
            outcome = "cancelled"
            try:
                if job.cancelled.is_set():
                    job.emit("error", Cancelled())
                    continue
                job.started_at = time.monotonic()
                result = job.fn(job)
                outcome = "cancelled" if job.cancelled.is_set() else "completed"
                job.emit("done", result)
            except BaseException as exc:  # noqa: BLE001  every job is answered, whatever went wrong
                outcome = "failed"
                job.emit("error", exc)
            finally:
                with self._lock:
                    self.counts[outcome] += 1
                    self._running = None
                    if job.started_at is not None:
                        took = time.monotonic() - job.started_at
                        self._seconds_per_job = 0.8 * self._seconds_per_job + 0.2 * took

    def begin_shutdown(self, grace: float) -> None:
        """Refuse new jobs, answer the waiting ones, let the running one finish within `grace` seconds."""
        with self._lock:
            self._deadline = time.monotonic() + grace
            self._closing = True
            waiting = list(self._queue)
            self._queue.clear()
            self.counts["refused_shutting_down"] += len(waiting)
            self._lock.notify_all()
        for job in waiting:
            job.emit("error", ShuttingDown())

    def close(self, timeout: float) -> bool:
        """Wake the worker so it ends once the queue is empty; True if it did within `timeout`."""
        self._closing = True
        with self._lock:
            self._lock.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()
