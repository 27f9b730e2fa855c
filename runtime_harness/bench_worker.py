"""One benchmark measurement of `bench --runtime python` in a fresh process, so its peak RSS is the
artifact's alone:

    python -m llama_mobile.runtime_harness.bench_worker executorch BUNDLE PROMPT_FILE NEW_TOKENS THREADS

ExecuTorch's TextLLMRunner through the Python bindings, with ExecuTorch's own kernels (XNNPACK, and
llama::custom_sdpa / update_cache from the wheel's libcustom_ops_aot_lib.so); one untimed warm-up
generation of the same prompt first (TextLLMRunner's first generation in a process costs more than the
next ones), as llama-bench warms up before it times. The process holds torch (~355 MiB before the
model), so "model RSS" (what loading and running added) is its like-for-like memory figure. Prints one
JSON object: prompt_tokens, generated_tokens, ttft_ms, prefill_tps, decode_tps, peak_rss_bytes,
model_rss_bytes.

The default native runner (runtime_harness/native_runner.py) and the llama.cpp peer
(runtime_harness/llama_bench.py) are processes of their own.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from llama_mobile.core.bundle import Bundle
from llama_mobile.core.manifest import read_manifest
from llama_mobile.core.memory import peak_rss_bytes, resident_bytes
from llama_mobile.runtime_harness.generate import Runner
from llama_mobile.runtime_harness.program import load_runtime_ops

BASELINE = 0


def executorch_run(bundle: Path, prompt: str, new_tokens: int, threads: int) -> dict:
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool


    load_runtime_ops()
    _unsafe_reset_threadpool(threads)
    global BASELINE
    BASELINE = resident_bytes()
    runner = Runner.of(Bundle(bundle, read_manifest(bundle)))  # the parent verified the files
    runner.generate(prompt, max_new_tokens=2)  # warm-up: prefill and one decode step, untimed
    result = runner.generate(prompt, max_new_tokens=new_tokens)
    s = result.stats
    return {"prompt_tokens": s.prompt_tokens, "generated_tokens": s.generated_tokens,
            "ttft_ms": s.time_to_first_token_ms, "prefill_tps": s.prefill_tokens_per_s,
            "decode_tps": s.decode_tokens_per_s, "warmup": 1}


def main() -> None:
    kind, artifact, prompt_file, new_tokens, threads = sys.argv[1:6]
    prompt = Path(prompt_file).read_text(encoding="utf-8")
    if kind != "executorch":
        sys.exit(f"bench_worker: unknown kind {kind!r} (the llama.cpp peer is runtime_harness/llama_bench.py)")
    result = executorch_run(Path(artifact), prompt, int(new_tokens), int(threads))
    result["peak_rss_bytes"] = peak_rss_bytes()
    # What loading and running the model added on top of the interpreter and its libraries.
    result["model_rss_bytes"] = result["peak_rss_bytes"] - BASELINE
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
