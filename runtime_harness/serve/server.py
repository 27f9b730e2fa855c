"""uvicorn on a socket bound before the models load, and a graceful stop on SIGTERM, SIGINT or SIGHUP.

On the first stopping signal: the engines refuse new work and answer every waiting request (503), the
running generations get `grace` seconds to finish (then they stop and their clients are told), uvicorn
stops accepting connections and waits for the open ones to finish, and the worker threads are joined.
A second SIGINT forces the exit (uvicorn's behaviour). serve() returns the signal that stopped it.
"""
from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading

import uvicorn

from llama_mobile.runtime_harness.serve.app import create_app
from llama_mobile.runtime_harness.serve.service import Service

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class _Server(uvicorn.Server):
    """uvicorn's server, telling the service when a stopping signal arrives; the signal is not raised
    again after the shutdown (the caller reports it)."""

    def __init__(self, config: uvicorn.Config, service: Service):
        super().__init__(config)
        self.service, self.stopped_by, self.loop = service, None, None

    async def startup(self, sockets=None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets)

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame) -> None:
        if self.stopped_by is None:
            self.stopped_by = sig
            if self.loop is not None:  # run on the loop, not inside whatever the signal interrupted
                self.loop.call_soon_threadsafe(self.service.begin_shutdown)
        super().handle_exit(sig if sig != signal.SIGHUP else signal.SIGTERM, frame)


def serve(service: Service, sock: socket.socket, *, api_key: str | None = None, json_log: bool = False) -> int | None:
    app = create_app(service, api_key=api_key, json_log=json_log)
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(app, host=host, port=port, http="h11", loop="asyncio", lifespan="on", ws="none",
                            access_log=False, log_config=None, log_level="warning",
                            timeout_graceful_shutdown=int(service.grace) + 5)
    server = _Server(config, service)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        if server.stopped_by is None:  # ended without a signal (startup failed): do not leave workers behind
            service.close()
    return server.stopped_by
