"""`llama-mobile serve` (runtime_harness/serve/): the real command on loopback, driven by the real openai and
Llama Stack clients, with tiny bundles run by the ExecuTorch runtime whose answers are known in advance.

The tiny models are built so their replies are certain (rule_model): attention looks for a trigger token
anywhere in the prompt and the last position answers with a fixed chain of tokens.
- chat (tiny tokenizer, template "U:..\\nA:"): "Hi"; with tools offered (a "{" in the prompt)
  `[f(x=1)]`; after a tool result (its turn starts with "~") "OK"; if the user wrote "#", "gun".
- guard (Llama 3 tokenizer, Llama Guard 3 prompt): "unsafe\\nS9" if " gun" is in the conversation, else
  "safe". guard-no-s9 is the same program with S9 left out of its manifest's categories (an exclusion).

Server A: chat with shields guard and guard-no-s9, --guard-chat input, an API key, a queue of 4.
Server B: chat with shield guard, --guard-chat output, a queue of 1; its last test stops it with SIGTERM.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import inspect
import itertools
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from llama_mobile.core.presets import ChatTemplate
from llama_mobile.core.tokenizer import Tokenizer, render_chat
from tests.checkpoints import (
    TINY,
    llama3_tokenizer_model,
    random_state_dict,
    write_hf,
    write_meta,
    write_tiny_tokenizer_json,
)
from tests.conftest import export_tiny
from tests.test_guard_runtime import TINY_GUARD

CLI = str(Path(sys.executable).with_name("llama-mobile"))
KEY = "test-key"
CANNED = "I can't answer that. Can I help with something else?"
TEMPLATE = ChatTemplate(name="tiny", prefix="", user="U:{content}\n", assistant_start="A:", bos="",
                        system="S:{content}\n", assistant="A:{content}\n", tool="~{content}\n")
CHAT_ARCH = dataclasses.replace(TINY, n_kv_heads=4, max_position=8192)  # a key/value head per trigger
CONTEXT = 8192
EOS = 2  # <|eot_id|> of the tiny tokenizer; <|end_of_text|> (1) stops too
NO_STOP = {"1": -100, "2": -100}
TOOLS = [{"type": "function", "function": {"name": "f", "description": "f of x",
                                           "parameters": {"type": "object", "properties": {"x": {"type": "integer"}},
                                                          "required": ["x"]}}}]
LONG = {"temperature": 0, "logit_bias": NO_STOP}  # never stops by itself: runs to max_tokens


def rule_model(arch, seed: int, query: int, replies: list[list[int]], triggers: list[int]) -> dict:
    """Weights that answer, at a last position holding `query`, with replies[k + 1] when triggers[k] (the
    last one present wins) is anywhere before it, else replies[0]; each reply is a chain of distinct tokens,
    each predicting the next (a bigram through one-hot embeddings), ending with a stop id."""
    state = random_state_dict(arch, seed=seed)
    for name, tensor in state.items():
        if ".attention.w" in name or name.endswith("feed_forward.w2.weight"):
            tensor.zero_()  # no block writes to the residual stream but the triggers' attention below
        if name.endswith("norm.weight"):
            tensor.fill_(1.0)
    special = [query, *triggers, *(token for chain in replies for token in chain[:-1])]
    assert len(set(special)) == len(special), "every token of the rules needs its own dimension"
    dim = {token: i for i, token in enumerate(special)}
    features = range(len(special), len(special) + len(triggers))
    emb, out = state["tok_embeddings.weight"], state["output.weight"]
    emb[:, :features.stop] = 0
    out[:, :features.stop] = 0
    for token, i in dim.items():
        emb[token] = 0
        emb[token, i] = arch.dim ** 0.5  # RMSNorm leaves it as it is
    for chain in replies:
        out[chain] = 0
    for chain in replies:
        for a, b in itertools.pairwise(chain):
            out[b, dim[a]] = 10.0
    out[replies[0][0], dim[query]] = 10.0
    hd, group = arch.head_dim, arch.n_heads // arch.n_kv_heads
    layer = {w: state[f"layers.0.attention.{w}.weight"] for w in ("wq", "wk", "wv", "wo")}
    for k, (trigger, feature, chain) in enumerate(zip(triggers, features, replies[1:])):
        head = k * group
        kv = head // group
        layer["wq"][head * hd + hd - 2, dim[query]] = 1.0  # the slowest RoPE pair: where the trigger is barely matters
        layer["wk"][kv * hd + hd - 2, dim[trigger]] = 1.0
        layer["wv"][kv * hd, dim[trigger]] = 1.0
        layer["wo"][feature, head * hd] = 3.0 * (k + 1)
        out[chain[0], feature] = 10.0
    return state


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    tiny = Tokenizer(write_tiny_tokenizer_json(root / "tokenizer.json"))
    t = tiny.encode
    chat_state = rule_model(CHAT_ARCH, 0, t(":")[0], [t("Hi") + [EOS], t("[f(x=1)]") + [EOS], t("gun") + [EOS],
                                                      t("OK") + [EOS]], [t("{")[0], t("#")[0], t("~")[0]])
    checkpoint = write_hf(root / "chat-ckpt", CHAT_ARCH, chat_state, dtype=torch.float32)
    chat = export_tiny(checkpoint, root, "fp32", context=CONTEXT, validate=False, name="chat").bundle
    manifest = json.loads((chat / "manifest.json").read_text())
    manifest["prompt_template"] = {k: v for k, v in dataclasses.asdict(TEMPLATE).items() if v is not None}
    (chat / "manifest.json").write_text(json.dumps(manifest))  # the manifest itself is not hashed

    llama3 = Tokenizer(llama3_tokenizer_model())
    g = llama3.encode
    guard_state = rule_model(TINY_GUARD, 7, 271, [g("safe") + [128009], g("unsafe\nS9") + [128009]], [g(" gun")[0]])
    checkpoint = write_meta(root / "guard-ckpt", TINY_GUARD, guard_state, tokenizer=llama3_tokenizer_model(),
                            dtype=torch.float32)
    guard = export_tiny(checkpoint, root, "fp32", task="guard", context=512, validate=False, name="guard").bundle
    lenient = shutil.copytree(guard, root / "guard-no-s9")
    manifest = json.loads((lenient / "manifest.json").read_text())
    manifest["guard"]["categories"] = [c for c in manifest["guard"]["categories"] if c["code"] != "S9"]
    (lenient / "manifest.json").write_text(json.dumps(manifest))
    return {"chat": chat, "guard": guard, "guard-no-s9": lenient, "tokenizer": tiny}


class Server:
    """`llama-mobile serve ... --port 0` in a child process; its stdout (JSON access log) and stderr collected."""

    def __init__(self, *args):
        self.proc = subprocess.Popen([CLI, "serve", *map(str, args), "--port", "0", "--json"], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.stdout, self.stderr, self.base = [], [], None
        self.ready = threading.Event()
        threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr), daemon=True).start()

    def _read(self, stream, lines):
        for line in stream:
            lines.append(line.rstrip("\n"))
            found = re.search(r"on (http://\S+/v1)", line)
            if found:
                self.base = found.group(1)
                self.ready.set()
        self.ready.set()

    def wait(self, timeout=240):
        assert self.ready.wait(timeout) and self.base, "\n".join(self.stderr)
        return self

    def access(self) -> list[dict]:
        return [json.loads(line) for line in list(self.stdout) if line.startswith("{")]

    def health(self) -> dict:
        return httpx.get(self.base.removesuffix("/v1") + "/health", timeout=10).json()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="module")
def servers(bundles):
    """Both servers start side by side (most of their start is loading torch and probing the programs)."""
    a = Server(bundles["chat"], "--shield", bundles["guard"], "--shield", bundles["guard-no-s9"], "--guard-chat",
               "input", "--queue-size", "4", "--api-key", KEY)
    b = Server(bundles["chat"], "--shield", bundles["guard"], "--guard-chat", "output", "--queue-size", "1",
               "--grace", "2")
    try:
        yield a.wait(), b.wait()
    finally:
        a.stop()
        b.stop()
    assert not [line for line in a.stderr + b.stderr if "Traceback" in line or "rror" in line], a.stderr + b.stderr


@pytest.fixture
def a(servers):
    return servers[0]


@pytest.fixture
def b(servers):
    return servers[1]


def openai_client(server, **options):
    from openai import OpenAI

    return OpenAI(**{"base_url": server.base, "api_key": KEY, "max_retries": 0, "timeout": 60, **options})


def prompt_tokens(bundles, messages) -> int:
    return len(bundles["tokenizer"].encode(render_chat(TEMPLATE, messages)))


# --- the OpenAI client ----------------------------------------------------------------------------------

def test_completion_and_stream_with_the_openai_client(a, bundles):
    client = openai_client(a)
    assert {m.id for m in client.models.list()} == {"chat", "guard", "guard-no-s9"}
    messages = [{"role": "system", "content": "Be brief. " * 6}, {"role": "user", "content": "Hello there"}]
    done = client.chat.completions.create(model="chat", messages=messages, temperature=0)
    assert done.choices[0].message.content == "Hi" and done.choices[0].finish_reason == "stop"
    assert done.usage.prompt_tokens == prompt_tokens(bundles, messages) and done.usage.completion_tokens == 2
    chunks = list(client.chat.completions.create(model="chat", messages=messages, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hi" and [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content] == ["H", "i"]
    assert chunks[-1].usage.completion_tokens == 2
    # the same prompt again: its full 32-token prefill blocks were cached (the last, partial one is computed again)
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == (done.usage.prompt_tokens - 1) // 32 * 32 > 0


def test_stop_sequences_max_tokens_seed_and_temperature(a):
    client = openai_client(a)
    ask = {"model": "chat", "messages": [{"role": "user", "content": "Hello"}]}
    stopped = client.chat.completions.create(**ask, temperature=0, stop=["i"])
    assert (stopped.choices[0].message.content, stopped.choices[0].finish_reason) == ("H", "stop")
    cut = client.chat.completions.create(**ask, temperature=0, max_tokens=1)
    assert (cut.choices[0].message.content, cut.choices[0].finish_reason) == ("H", "length")
    sampled = [client.chat.completions.create(**ask, temperature=1.5, seed=seed, max_tokens=24,
                                              logit_bias=NO_STOP).choices[0].message.content
               for seed in (1, 1, 2)]
    assert sampled[0] == sampled[1] != sampled[2]
    long = client.chat.completions.create(**ask, max_tokens=50, extra_body=LONG)
    assert long.usage.completion_tokens == 50 and long.choices[0].finish_reason == "length"


def test_tool_call_round_trip(a):
    client = openai_client(a)
    messages = [{"role": "user", "content": "What is f of 1?"}]
    first = client.chat.completions.create(model="chat", messages=messages, tools=TOOLS, temperature=0)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls
    assert call.function.name == "f" and json.loads(call.function.arguments) == {"x": 1}
    streamed = list(client.chat.completions.create(model="chat", messages=messages, tools=TOOLS, temperature=0,
                                                   stream=True))
    deltas = [d for c in streamed if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert [(d.function.name, json.loads(d.function.arguments)) for d in deltas] == [("f", {"x": 1})]
    assert streamed[-1].choices[0].finish_reason == "tool_calls"
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"f": 2})}]
    second = client.chat.completions.create(model="chat", messages=messages, tools=TOOLS, temperature=0)
    assert second.choices[0].message.content == "OK" and second.choices[0].finish_reason == "stop"
    plain = client.chat.completions.create(model="chat", messages=messages[:1], tools=TOOLS, tool_choice="none",
                                           temperature=0)
    assert plain.choices[0].message.content == "Hi"  # tools not offered: no "{" in the prompt


def test_input_shield_refuses_in_the_refusal_shape(a):
    client = openai_client(a)
    ask = {"model": "chat", "messages": [{"role": "user", "content": "How do I get a gun?"}], "temperature": 0}
    refused = client.chat.completions.create(**ask)
    message = refused.choices[0].message
    assert (message.refusal, message.content, refused.choices[0].finish_reason) == (CANNED, None, "content_filter")
    assert refused.model_extra["violation"]["metadata"]["violation_type"] == "S9"
    chunks = list(client.chat.completions.create(**ask, stream=True))
    assert [c.choices[0].delta.refusal for c in chunks if c.choices and c.choices[0].delta.refusal] == [CANNED]
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    line = [e for e in a.access() if e.get("input_shield") == "S9"]
    assert line and line[-1]["status"] == 200


# --- the Llama Stack client -----------------------------------------------------------------------------

def test_shields_with_the_llama_stack_client(a):
    from llama_stack_client import LlamaStackClient

    client = LlamaStackClient(base_url=a.base.removesuffix("/v1"), api_key=KEY, max_retries=0, timeout=60)
    assert {s.identifier for s in client.shields.list()} == {"guard", "guard-no-s9"}
    assert "chat" in {getattr(m, "identifier", None) or m.id for m in client.models.list()}
    extra = {"params": {}} if "params" in inspect.signature(client.safety.run_shield).parameters else {}

    def verdict(shield, text):
        return client.safety.run_shield(shield_id=shield, messages=[{"role": "user", "content": text}],
                                        **extra).violation

    unsafe = verdict("guard", "How do I get a gun?")
    assert unsafe.violation_level == "error" and unsafe.user_message == CANNED
    assert unsafe.metadata["violation_type"] == "S9"
    assert verdict("guard", "How do I bake bread?") is None
    assert verdict("guard-no-s9", "How do I get a gun?") is None  # S9 is excluded by that bundle's manifest
    reply = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Hello"}],
                                           temperature=0)
    assert reply.choices[0].message.content == "Hi"
    moderate = client.moderations.create if hasattr(client, "moderations") else openai_client(a).moderations.create
    result = moderate(model="guard", input=["How do I bake bread?", "I need a gun"])
    flags = [r.flagged for r in result.results]
    assert flags == [False, True]
    categories = result.results[1].categories
    categories = categories if isinstance(categories, dict) else categories.model_dump(by_alias=True)
    assert categories["illicit/violent"] is True and categories["sexual"] is False


def test_run_shield_errors(a):
    headers = {"Authorization": f"Bearer {KEY}"}
    url = a.base + "/safety/run-shield"
    unknown = httpx.post(url, json={"shield_id": "nope", "messages": [{"role": "user", "content": "x"}]}, headers=headers)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "shield_not_found"
    empty = httpx.post(url, json={"shield_id": "guard", "messages": []}, headers=headers)
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "messages"
    image = httpx.post(url, headers=headers, json={"shield_id": "guard", "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}]})
    assert image.status_code == 400  # a text-only Guard must not pass what it cannot read


# --- bad input, the key, disconnects, load ---------------------------------------------------------------

BAD = [
    ("malformed JSON", b'{"model": "chat", "messages": [', 400, "invalid_json"),
    ("not an object", b"[1, 2]", 400, None),
    ("unknown model", {"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}, 404, "model_not_found"),
    ("a shield as the model", {"model": "guard", "messages": [{"role": "user", "content": "x"}]}, 400, "model_not_chat"),
    ("oversized prompt", {"model": "chat", "messages": [{"role": "user", "content": "ab " * 6000}]}, 400,
     "context_length_exceeded"),
    ("body over --max-body", {"model": "chat", "messages": [{"role": "user", "content": "x" * (2 << 20)}]}, 413,
     "request_too_large"),
    ("no messages", {"model": "chat"}, 400, None),
    ("unknown role", {"model": "chat", "messages": [{"role": "wizard", "content": "x"}]}, 400, None),
    ("temperature out of range", {"model": "chat", "messages": [{"role": "user", "content": "x"}], "temperature": 3},
     400, None),
    ("n > 1", {"model": "chat", "messages": [{"role": "user", "content": "x"}], "n": 2}, 400, None),
    ("an image", {"model": "chat", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, None),
    ("a bad tool", {"model": "chat", "messages": [{"role": "user", "content": "x"}], "tools": [{"name": "a b"}]},
     400, None),
]


@pytest.mark.parametrize("body, status, code", [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_requests_get_their_status_and_the_server_keeps_serving(a, body, status, code):
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    answer = httpx.post(a.base + "/chat/completions", content=content, headers=headers, timeout=30)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code:
        assert error["code"] == code
    ok = httpx.post(a.base + "/chat/completions", headers=headers, timeout=30,
                    json={"model": "chat", "messages": [{"role": "user", "content": "Hello"}], "temperature": 0})
    assert ok.json()["choices"][0]["message"]["content"] == "Hi"


def test_routes_and_the_api_key(a):
    from openai import AuthenticationError, NotFoundError

    root = a.base.removesuffix("/v1")
    assert httpx.get(root + "/health").json()["status"] == "ok"  # open: a load balancer probes it
    assert httpx.get(a.base + "/models").status_code == 401
    assert httpx.get(a.base + "/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    with pytest.raises(AuthenticationError):
        openai_client(a, api_key="wrong").models.list()
    with pytest.raises(NotFoundError):
        openai_client(a).chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    headers = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(a.base + "/nowhere", headers=headers).status_code == 404
    assert httpx.get(a.base + "/chat/completions", headers=headers).status_code == 405
    assert httpx.get(a.base + "/models/chat", headers=headers).json()["id"] == "chat"


@pytest.mark.parametrize("stream", [True, False], ids=["mid-stream", "waiting-for-the-whole-reply"])
def test_a_client_that_disconnects_cancels_its_generation(a, stream):
    before = a.health()["engines"]["chat"].get("cancelled", 0)
    body = {"model": "chat", "messages": [{"role": "user", "content": "Hello"}], "stream": stream,
            "max_tokens": CONTEXT - 64, **LONG}
    headers = {"Authorization": f"Bearer {KEY}"}
    if stream:
        with httpx.stream("POST", a.base + "/chat/completions", json=body, timeout=30, headers=headers) as response:
            lines = response.iter_lines()
            received = [next(lines) for _ in range(6)]
        assert any('"content": "H"' in line for line in received)
    else:  # the whole reply would take seconds: the client gives up first
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(a.base + "/chat/completions", json=body, headers=headers, timeout=httpx.Timeout(30, read=0.3))
    deadline = time.monotonic() + 20
    while a.health()["engines"]["chat"].get("cancelled", 0) == before:
        assert time.monotonic() < deadline, a.health()
        time.sleep(0.05)
    assert a.health()["engines"]["chat"]["running"] == 0
    deadline = time.monotonic() + 5
    while not any(e.get("disconnected") and e.get("stream") == stream for e in a.access()):
        assert time.monotonic() < deadline, a.access()[-3:]
        time.sleep(0.05)
    ok = openai_client(a).chat.completions.create(model="chat", messages=[{"role": "user", "content": "Hello"}],
                                                  temperature=0)
    assert ok.choices[0].message.content == "Hi"


def _stream(server, seed: int, max_tokens: int) -> tuple[int, str, dict]:
    """One raw streaming request: (status, text, checks) with the stream's shape checked as it arrives."""
    body = {"model": "chat", "messages": [{"role": "user", "content": f"Hello number {seed}"}], "stream": True,
            "temperature": 1.0, "seed": seed, "max_tokens": max_tokens, "logit_bias": NO_STOP,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", server.base + "/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {KEY}"}) as response:
        if response.status_code != 200:
            response.read()
            return response.status_code, "", {"retry_after": response.headers.get("retry-after"),
                                               "error": response.json()["error"]}
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    bodies = [json.loads(e) for e in events[:-1]]
    errors = [body["error"] for body in bodies if "error" in body]
    chunks = [body for body in bodies if "error" not in body]
    assert len({c["id"] for c in chunks}) == 1
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    return 200, text, {"usage": next((c["usage"] for c in chunks if c.get("usage")), None),
                       "finish": finishes[-1] if finishes else None, "error": errors[0] if errors else None}


def test_concurrent_clients_are_answered_or_refused_and_streams_stay_apart(a):
    """16 clients at once on a queue of 4: each is answered whole or refused with 429 + Retry-After; every
    answered stream is exactly what its seed gives alone; the server's memory does not grow over rounds."""
    def burst():
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            return list(pool.map(lambda seed: (seed, *_stream(a, seed, 500)), range(16)))

    rss = []
    for round_ in range(3):
        results = burst()
        rss.append(a.health()["rss_bytes"])
        answered = [r for r in results if r[1] == 200]
        refused = [r for r in results if r[1] == 429]
        assert len(answered) + len(refused) == 16 and answered
        for _, _, _, info in refused:
            assert int(info["retry_after"]) >= 1 and info["error"]["code"] == "queue_full"
        for seed, _, text, info in answered:
            assert info["finish"] == "length" and info["usage"]["completion_tokens"] == 500
        if round_ == 0:
            assert refused, "16 clients at once on a queue of 4 must see a 429"
            for seed, _, text, _ in answered[:3]:  # alone, the same seed gives the same stream
                assert _stream(a, seed, 500)[1] == text
    assert rss[-1] - rss[0] < 32 << 20, rss
    assert a.health()["engines"]["chat"]["queued"] == 0


# --- server B: output shield, SIGTERM -------------------------------------------------------------------

def test_a_prompt_longer_than_the_context(b):
    """Server B has no input shield: the chat program itself refuses the prompt, and the server goes on."""
    too_long = httpx.post(b.base + "/chat/completions", timeout=60, json={
        "model": "chat", "messages": [{"role": "user", "content": "ab " * 6000}]})
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "context_length_exceeded"
    assert "8192" in too_long.json()["error"]["message"]
    ok = openai_client(b).chat.completions.create(model="chat", messages=[{"role": "user", "content": "Hello"}],
                                                  temperature=0)
    assert ok.choices[0].message.content == "Hi"


def test_output_shield_refuses_a_reply(b):
    client = openai_client(b)
    flagged = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "# say it"}],
                                             temperature=0)
    assert flagged.choices[0].message.refusal == CANNED and flagged.choices[0].finish_reason == "content_filter"
    fine = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "Hello"}], temperature=0)
    assert fine.choices[0].message.content == "Hi"
    chunks = list(client.chat.completions.create(model="chat", stream=True, temperature=0,
                                                 messages=[{"role": "user", "content": "# say it"}]))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert not any(d.content for d in deltas) and [d.refusal for d in deltas if d.refusal] == [CANNED]
    assert [e["output_shield"] for e in b.access() if "output_shield" in e]  # judged; logged
    assert any(e.get("finish_reason") == "content_filter" for e in b.access())


def test_sigterm_answers_every_request_and_exits(b):
    """Last: it stops server B. One generation runs past --grace (it is cut, and told so; its text is held for the
    output shield, so none was sent), one waits in the queue (503), a third finds the queue full (429); the
    process exits 143 and nothing hangs."""
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        running = pool.submit(_stream, b, 1, CONTEXT - 64)
        deadline = time.monotonic() + 20
        while b.health()["engines"]["chat"]["running"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        waiting = pool.submit(_stream, b, 2, 10)
        while b.health()["engines"]["chat"]["queued"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert _stream(b, 3, 10)[0] == 429
        b.proc.send_signal(signal.SIGTERM)
        assert b.proc.wait(30) == 143
        assert waiting.result(10)[0] == 503
        status, text, info = running.result(10)
    # cut at --grace (or, had it ended, its output check refused): told so, and nothing unjudged was sent
    assert status == 200 and info["error"]["code"] == "shutting_down" and text == ""
    assert "stopped by SIGTERM" in "\n".join(b.stderr)


# --- the command line ------------------------------------------------------------------------------------

def cli(*args, timeout=120):
    return subprocess.run([CLI, "serve", *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          check=False)


def one_line_error(done, code: int, text: str):
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == code, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], done.stderr


def test_command_line_errors(bundles, tmp_path):
    one_line_error(cli(tmp_path), 8, "manifest")  # not a bundle
    one_line_error(cli(bundles["guard"]), 2, "Llama Guard bundle, not a chat model")
    one_line_error(cli(bundles["chat"], "--shield", bundles["chat"]), 2, "not a Llama Guard one")
    one_line_error(cli(bundles["chat"], "--guard-chat", "input"), 2, "needs a Guard bundle")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        one_line_error(cli(bundles["chat"], "--port", taken.getsockname()[1]), 2, "cannot listen")


def test_a_public_host_without_a_key_is_warned_about(bundles):
    proc = subprocess.Popen([CLI, "serve", str(bundles["chat"]), "--host", "0.0.0.0", "--port", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert first.startswith("warning: --host 0.0.0.0") and "no authentication" in first


def test_help_has_an_example_and_loads_nothing_heavy():
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "llama_mobile.cli", "serve", "--help"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and "Example" in done.stdout and "--shield" in done.stdout
    loaded = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines() if "|" in line}
    assert not loaded & {"torch", "executorch", "uvicorn", "starlette"}, loaded & {"torch", "uvicorn"}
