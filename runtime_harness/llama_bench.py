"""The llama.cpp side of `bench`: llama.cpp's own `llama-bench`, from `llama-mobile peer build`.

One measurement (`measure`) is one small Python process that runs llama-bench twice, with llama.cpp's
own warm-up before each timing, the same thread count as our side, and one repetition (bench makes
the runs and interleaves them with ours):

    llama-bench -m GGUF -t T -r 1 -o json -p P -n 0              prefill: pp P, from an empty cache
    llama-bench -m GGUF -t T -r 1 -o json -p 0 -n N-1 -d P       decode: tg N-1 after P cached tokens

which matches our side's runs: a P-token prompt, then N-1 greedy steps at positions P.. (the first
of our N new tokens comes out of prefill). llama-bench feeds random token ids; the cost of a step does
not depend on them. It reports no time to first token: here it is P / (pp tokens/s), the prefill's
own time. Peak RSS is the larger of the two llama-bench processes' ru_maxrss, read with wait4 from a
launcher of ~20 MB (Linux carries a parent's high-water mark into its children, so the launcher
stays small); it includes llama.cpp's f16 KV cache for P + N tokens only (llama-bench sizes its
context to the test), where our program holds its whole context.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from llama_mobile.core.errors import ResourceError, RuntimeFailure
from llama_mobile.runtime_harness.llama_cpp_build import LlamaCppBuild, bench_tool, isa_label


def commands(binary: Path, gguf: Path, prompt_tokens: int, new_tokens: int, threads: int) -> dict[str, list[str]]:
    base = [str(binary), "-m", str(gguf), "-t", str(threads), "-r", "1", "-o", "json"]
    return {"pp": [*base, "-p", str(prompt_tokens), "-n", "0"],
            "tg": [*base, "-p", "0", "-n", str(new_tokens - 1), "-d", str(prompt_tokens)]}


def parse(text: str) -> list[dict]:
    """llama-bench's `-o json` output: a list of test records."""
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"llama-bench printed no JSON ({error.msg})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError("llama-bench's JSON is not a list of test records")
    return records


def pick(records: list[dict], n_prompt: int, n_gen: int, n_depth: int) -> dict:
    for record in records:
        if (record.get("n_prompt"), record.get("n_gen"), record.get("n_depth", 0)) == (n_prompt, n_gen, n_depth):
            return record
    found = [(r.get("n_prompt"), r.get("n_gen"), r.get("n_depth")) for r in records]
    raise ValueError(f"llama-bench has no test pp {n_prompt} / tg {n_gen} at depth {n_depth} (it ran {found})")


def tokens_per_second(record: dict, tokens: int) -> float:
    """From the test's own samples (one repetition here); avg_ts is the same figure."""
    samples = record.get("samples_ns") or [record["avg_ns"]]
    return tokens * 1e9 / (sum(samples) / len(samples))


def figures(pp_records: list[dict], tg_records: list[dict], prompt_tokens: int, new_tokens: int) -> dict:
    """Our side's figures from llama-bench's two runs (see the module docstring)."""
    pp = pick(pp_records, prompt_tokens, 0, 0)
    tg = pick(tg_records, 0, new_tokens - 1, prompt_tokens)
    prefill = tokens_per_second(pp, prompt_tokens)
    keys = ("build_commit", "build_number", "cpu_info", "backends", "model_type", "n_threads", "n_batch",
            "n_ubatch", "type_k", "type_v", "flash_attn")
    return {"prompt_tokens": prompt_tokens, "generated_tokens": new_tokens, "ttft_ms": prompt_tokens / prefill * 1000,
            "prefill_tps": prefill, "decode_tps": tokens_per_second(tg, new_tokens - 1),
            "llama_bench": {key: pp.get(key) for key in keys}}


def run_measured(command: list[str]) -> tuple[str, int]:
    """(stdout, peak RSS in bytes) of one child process, its rusage read with wait4."""
    with tempfile.TemporaryFile() as errors:  # a file, not a pipe: nothing blocks while stdout is read
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors)
        stdout = process.stdout.read()
        process.stdout.close()
        _, status, usage = os.wait4(process.pid, 0)  # reaped here, so Popen never waits on it
        process.returncode = code = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        stderr = errors.read()
    if code != 0:
        lines = stderr.decode(errors="replace").strip().splitlines() or [f"exit status {code}"]
        reason = next((line for line in reversed(lines) if "error" in line.lower()), lines[-1])
        raise RuntimeFailure(f"llama-bench failed ({reason.strip()[:200]})", path=command[2])
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return stdout.decode(), usage.ru_maxrss * scale


def run_both(binary: Path, gguf: Path, prompt_tokens: int, new_tokens: int, threads: int) -> dict:
    outputs, peaks = {}, []
    for test, command in commands(binary, gguf, prompt_tokens, new_tokens, threads).items():
        outputs[test], peak = run_measured(command)
        peaks.append(peak)
    result = figures(parse(outputs["pp"]), parse(outputs["tg"]), prompt_tokens, new_tokens)
    result["peak_rss_bytes"] = max(peaks)
    return result


def measure(gguf: Path, prompt_tokens: int, new_tokens: int, threads: int, binary: Path | None = None) -> dict:
    """One peer run, from a small launcher process (see the module docstring)."""
    if binary is None:
        binary, _ = bench_tool()
    command = [sys.executable, "-m", "llama_mobile.runtime_harness.llama_bench", str(binary), str(gguf),
               str(prompt_tokens), str(new_tokens), str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeFailure(f"the llama.cpp run failed ({tail})", path=gguf,
                             fix="run the llama-bench command of runtime_harness/llama_bench.py by hand")
    return json.loads(done.stdout.strip().splitlines()[-1])


def describe(build: LlamaCppBuild, run: dict | None = None) -> dict[str, str]:
    """The runtime, kernels, memory and timing of the peer, as the bench report names them."""
    info = (run or {}).get("llama_bench", {})
    commit = f", llama.cpp commit {info['build_commit']}" if info.get("build_commit") else ""
    isa = isa_label(build.info().get("isa_options", {}))
    attention = {-1: "auto", 0: "off", 1: "on"}.get(info.get("flash_attn"), info.get("flash_attn"))
    cache = f"; KV cache {info.get('type_k', 'f16')}/{info.get('type_v', 'f16')}, flash attention {attention}" \
        if info else ""
    return {
        "runtime": f"llama.cpp llama-bench (llama-cpp-python {build.version} sdist{commit}, `llama-mobile peer build`)",
        "kernels": f"ggml {info.get('backends') or 'CPU'} backend, built with {isa}{cache}",
        "timing": "llama-bench's own warm-up, then pp P from an empty cache (prefill tok/s) and tg N-1 at depth P "
                  "(decode tok/s), random token ids; time to first token = P / prefill tok/s (derived)",
        "memory": "peak RSS: the larger llama-bench process's ru_maxrss (wait4); its f16 KV cache holds P + N "
                  "tokens, ours the program's whole context; no model RSS (not measured for this side)",
    }


def main() -> None:
    binary, gguf, prompt_tokens, new_tokens, threads = sys.argv[1:6]
    try:
        result = run_both(Path(binary), Path(gguf), int(prompt_tokens), int(new_tokens), int(threads))
    except (RuntimeFailure, ResourceError, ValueError) as error:
        sys.exit(f"llama_bench: {error}")
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
