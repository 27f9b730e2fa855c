"""Two ASGI middlewares: the API key check, and one access log line per request (JSON with --json)."""
from __future__ import annotations

import hmac
import json
import sys
import time
from datetime import datetime, timezone

from llama_mobile.runtime_harness.serve.schema import ApiError

OPEN_PATHS = ("/health",)  # what a load balancer probes without a key


class ApiKey:
    """With a key, every route but /health needs `Authorization: Bearer KEY` (what OpenAI's and Llama
    Stack's clients send); a wrong or missing key is 401 in OpenAI's shape."""

    def __init__(self, app, key: str | None):
        self.app, self.key = app, key.encode() if key else None

    async def __call__(self, scope, receive, send):
        if self.key is None or scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"authorization", b"")
        if not hmac.compare_digest(given, b"Bearer " + self.key):
            error = ApiError(401, "missing or wrong API key: send Authorization: Bearer KEY", code="invalid_api_key")
            body = json.dumps(error.body()).encode()
            await send({"type": "http.response.start", "status": 401,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                    (b"www-authenticate", b"Bearer")]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


class AccessLog:
    """After each request: client, method, path, status, bytes, duration, and what the route recorded in
    request.state.log (model, tokens, queue wait, finish reason, shield verdicts, a disconnect)."""

    def __init__(self, app, *, json_lines: bool = False, stream=None):
        self.app, self.json_lines, self.stream = app, json_lines, stream

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, seen = time.perf_counter(), {"status": 500, "bytes": 0}

        async def sending(message):
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            elif message["type"] == "http.response.body":
                seen["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.write(scope, seen, (time.perf_counter() - started) * 1000)

    def write(self, scope, seen: dict, ms: float) -> None:
        client = scope.get("client") or ("-", 0)
        extra = (scope.get("state") or {}).get("log") or {}
        line = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "client": client[0],
                "method": scope["method"], "path": scope["path"], "status": seen["status"], "bytes": seen["bytes"],
                "ms": round(ms, 1), **extra}
        stream = self.stream or (sys.stdout if self.json_lines else sys.stderr)
        if self.json_lines:
            text = json.dumps(line, ensure_ascii=False)
        else:
            notes = " ".join(f"{k}={v}" for k, v in extra.items())
            text = f"{client[0]} {scope['method']} {scope['path']} {seen['status']} {seen['bytes']} B {ms:.0f} ms {notes}"
        try:
            stream.write(text.rstrip() + "\n")
            stream.flush()
        except (OSError, ValueError):  # a closed pipe must not take the server down
            pass
