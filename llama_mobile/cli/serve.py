"""`llama-mobile serve BUNDLE [--shield GUARD]`: the bundle behind an OpenAI- and Llama Stack-compatible HTTP API."""
from __future__ import annotations

import ipaddress
import os
import signal
import sys
from pathlib import Path

import click

from llama_mobile.cli.common import FilePath, quiet_libraries, say

LOOPBACK_NAMES = ("localhost",)


@click.command()
@click.argument("bundle", type=FilePath(path_type=Path))
@click.option("--shield", "shields", multiple=True, type=FilePath(path_type=Path),
              help="a Llama Guard bundle served as a Llama Stack shield (run_shield, moderations); repeat for more")
@click.option("--guard-chat", type=click.Choice(["off", "input", "output", "both"]), default="off", show_default=True,
              help="also judge every chat request (input) and/or reply (output) with the first --shield; a "
              "violation is answered as a refusal")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on; anything but loopback is reachable from the network")
@click.option("--port", default=8321, show_default=True, type=click.IntRange(0, 65535), help="0: any free port")
@click.option("--api-key", envvar="LLAMA_MOBILE_API_KEY", default=None,
              help="require `Authorization: Bearer KEY` (env LLAMA_MOBILE_API_KEY); /health stays open")
@click.option("--queue-size", default=8, show_default=True, type=click.IntRange(1, 4096),
              help="requests that may wait per model; more get HTTP 429 with Retry-After")
@click.option("--grace", default=10.0, show_default=True, type=click.FloatRange(0, 3600),
              help="seconds a running generation gets to finish after SIGTERM")
@click.option("--max-body", default=1 << 20, show_default=True, type=click.IntRange(1024),
              help="largest request body in bytes (HTTP 413 beyond)")
@click.option("--json", "as_json", is_flag=True, help="one JSON access log line per request on stdout")
def serve(bundle, shields, guard_chat, host, port, api_key, queue_size, grace, max_body, as_json):
    """Serve a bundle over HTTP: OpenAI's /v1/chat/completions and /v1/models, Llama Stack's shields
    (/v1/safety/run-shield, /v1/moderations) with Llama Guard bundles, /health.

    Each bundle's .pte runs on the ExecuTorch runtime, one request at a time, in a bounded queue.
    SIGTERM or Ctrl-C stops it gracefully: waiting requests are answered 503, running ones get --grace seconds.

    \b
    Examples:
      llama-mobile serve out/smollm2-135m-instruct-8da4w-mixed-gptq-xnnpack
      llama-mobile serve out/llama3.2-1b-8da4w-xnnpack --shield out/llama-guard-3-1b-guard-int4-xnnpack --port 8321
      # then: OpenAI(base_url="http://127.0.0.1:8321/v1", api_key="none")
    """
    quiet_libraries()
    import importlib.util

    from llama_mobile.core.bundle import verify_bundle
    from llama_mobile.core.errors import ResourceError, UsageError

    missing = [name for name in ("uvicorn", "starlette") if importlib.util.find_spec(name) is None]
    if missing:
        raise ResourceError(f"serve needs {' and '.join(missing)}", fix="pip install 'llama-mobile[serve]'")
    if guard_chat != "off" and not shields:
        raise UsageError(f"--guard-chat {guard_chat} needs a Guard bundle", fix="add --shield GUARD_BUNDLE")
    verified = verify_bundle(bundle)
    if verified.is_guard:
        raise UsageError(f"{bundle} is a Llama Guard bundle, not a chat model",
                         fix=f"serve a chat bundle and pass this one as --shield {bundle}")
    guards = [verify_bundle(path) for path in shields]
    for path, guard in zip(shields, guards):
        if not guard.is_guard:
            raise UsageError(f"--shield {path} is a {guard.task} bundle, not a Llama Guard one",
                             fix="export one with --model llama-guard-3-1b (or --task guard)")
    names = [verified.path.name, *(g.path.name for g in guards)]
    if len(set(names)) != len(names):
        raise UsageError(f"two bundles are named {next(n for n in names if names.count(n) > 1)!r}: "
                         "models and shields are known by their folder names", fix="rename one folder")
    from llama_mobile.core.tokenizer import conversation_template

    conversation_template(verified.chat_template)  # a template without turns is refused before anything loads
    if not _loopback(host):
        say(f"warning: --host {host} is reachable from the network and "
            + ("traffic is plain HTTP (put TLS in front of it)" if api_key else
               "there is no authentication: anyone who reaches it can use the model; set --api-key"))

    from llama_mobile.runtime_harness.serve.listen import bind

    sock = bind(host, port)
    try:
        service = _load(verified, guards, queue_size=queue_size, guard_chat=guard_chat, max_body=max_body,
                        grace=grace)
    except BaseException:
        sock.close()
        raise
    from llama_mobile.runtime_harness.serve.server import serve as run

    bound = sock.getsockname()
    where = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    shields_note = f", shields {', '.join(g.path.name for g in guards)} (chat guard: {guard_chat})" if guards else ""
    say(f"serving {verified.path.name}{shields_note} on http://{where}:{bound[1]}/v1 "
        f"(queue {queue_size} per model, pid {os.getpid()}); Ctrl-C or SIGTERM stops it")
    stopped_by = run(service, sock, api_key=api_key, json_log=as_json)
    if stopped_by is not None:
        say(f"stopped by {signal.Signals(stopped_by).name}: in-flight requests were answered")
        sys.stdout.flush()
        sys.exit(128 + stopped_by)


def _load(verified, guards, **options):
    """The chat program and the Guard programs, loaded side by side (each is first probed in a child process)."""
    from concurrent.futures import ThreadPoolExecutor

    from llama_mobile.runtime_harness.serve.generation import TextModel
    from llama_mobile.runtime_harness.serve.safety import GuardShield
    from llama_mobile.runtime_harness.serve.service import Service

    with ThreadPoolExecutor(max_workers=1 + len(guards)) as pool:
        model = pool.submit(TextModel, verified)
        shields = [pool.submit(GuardShield, guard) for guard in guards]
        return Service(model.result(), [s.result() for s in shields], **options)


def _loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
