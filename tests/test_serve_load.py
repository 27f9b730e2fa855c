"""A bounded load test of `llama-mobile serve` on the embedded model (SmolLM2-135M, exported into out/ by
`llama-mobile export`): N streaming clients at once on a small queue. Every request is answered whole or
refused with 429 (then retried after Retry-After); every answered stream is exactly the reply its prompt gets
alone (greedy, and a reply does not depend on what ran before it); the server's memory does not grow.
Prints requests/s, tokens/s and latency percentiles. Slow (about a minute): ./run_tests.sh --slow."""
from __future__ import annotations

import concurrent.futures
import json
import os
import statistics
import time
from pathlib import Path

import httpx
import pytest

from tests.test_serve import Server

BUNDLE = Path(__file__).resolve().parent.parent / "out" / "smollm2-135m-instruct-8da4w-mixed-gptq-xnnpack"
PROMPTS = [json.loads(line)["prompt"] for line in
           (Path(__file__).resolve().parent.parent / "runtime_harness/corpus/prompts.jsonl").read_text().splitlines()]
PROMPTS += ["Give me a word that rhymes with cat.", "What is two plus two?", "Name a color of the rainbow."]
CLIENTS, PER_CLIENT, TOKENS = 8, 4, 32


def ask(base: str, prompt: str, stream: bool) -> dict:
    body = {"model": BUNDLE.name, "messages": [{"role": "user", "content": prompt}], "temperature": 0,
            "max_tokens": TOKENS, "stream": stream, "stream_options": {"include_usage": True} if stream else None}
    started, first, refused = time.perf_counter(), None, 0
    while True:
        with httpx.stream("POST", base + "/chat/completions", json=body, timeout=300) as response:
            if response.status_code == 429:
                refused += 1
                time.sleep(float(response.headers["retry-after"]))
                continue
            assert response.status_code == 200, response.read()
            if not stream:
                data = json.loads(response.read())
                return {"text": data["choices"][0]["message"]["content"], "tokens": data["usage"]["completion_tokens"]}
            events = []
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append(line.removeprefix("data: "))
                    if first is None and '"content": "' in line and '"content": ""' not in line:
                        first = time.perf_counter()
        break
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len({c["id"] for c in chunks}) == 1 and all("error" not in c for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    done = time.perf_counter()
    return {"text": text, "tokens": chunks[-1]["usage"]["completion_tokens"], "latency": done - started,
            "ttft": (first or done) - started, "refused": refused, "prompt": prompt}


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@pytest.mark.slow
@pytest.mark.parametrize("queue", [8, 4], ids=["queue-8", "queue-4-overloaded"])
def test_load_on_the_embedded_model(queue):
    if not BUNDLE.is_dir():
        pytest.skip(f"{BUNDLE} is missing: run `llama-mobile export` first")
    server = Server(BUNDLE, "--queue-size", str(queue)).wait()
    try:
        expected = {p: ask(server.base, p, stream=False)["text"] for p in PROMPTS}  # alone, one at a time
        alone = [ask(server.base, p, stream=True) for p in PROMPTS]
        assert all(r["text"] == expected[r["prompt"]] for r in alone)
        rss_before = server.health()["rss_bytes"]
        jobs = [PROMPTS[(c + k) % len(PROMPTS)] for c in range(CLIENTS) for k in range(PER_CLIENT)]
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
            results = list(pool.map(lambda p: ask(server.base, p, stream=True), jobs))
        wall = time.perf_counter() - started
        rss_after = server.health()["rss_bytes"]
        mixed = [r["prompt"] for r in results if r["text"] != expected[r["prompt"]]]
        assert not mixed, mixed
        assert all(r["tokens"] <= TOKENS for r in results)
        latencies = [r["latency"] * 1000 for r in results]
        ttfts = [r["ttft"] * 1000 for r in results]
        first_try = [r["latency"] * 1000 for r in results if not r["refused"]]
        report = {
            "clients": CLIENTS, "requests": len(results), "queue_size": queue, "max_tokens": TOKENS,
            "refused_429_then_retried": sum(r["refused"] for r in results),
            "seconds": round(wall, 2), "requests_per_s": round(len(results) / wall, 2),
            "tokens_per_s": round(sum(r["tokens"] for r in results) / wall, 1),
            "latency_ms": {"p50": round(percentile(latencies, 50)), "p95": round(percentile(latencies, 95)),
                           "max": round(max(latencies))},
            "latency_ms_not_refused": {"p50": round(percentile(first_try, 50)), "p95": round(percentile(first_try, 95))}
            if first_try else None,
            "ttft_ms": {"p50": round(percentile(ttfts, 50)), "p95": round(percentile(ttfts, 95))},
            "alone_latency_ms_p50": round(statistics.median(r["latency"] * 1000 for r in alone)),
            "rss_mib": {"before": rss_before >> 20, "after": rss_after >> 20},
            "load_average": os.getloadavg(),
        }
        print("\nserve load:", json.dumps(report))
        assert rss_after - rss_before < 64 << 20, report
        if queue >= CLIENTS - 1:  # one runs, the rest wait: nobody is refused
            assert report["refused_429_then_retried"] == 0, report
    finally:
        server.stop()
