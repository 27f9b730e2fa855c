"""`llama-mobile bench`: speed, memory and size of a bundle, optionally against llama.cpp in the same run.

Every measurement runs in a fresh process (peak RSS is the artifact's own), after warm-up runs;
figures are medians with min-max spread. Ratios are ours / llama.cpp's, both from this run.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from llama_mobile.errors import ResourceError, RuntimeFailure
from llama_mobile.progress import Progress

STAGES = ("prepare", "executorch", "llama.cpp", "quality")
FIGURES = ("ttft_ms", "prefill_tps", "decode_tps", "peak_rss_bytes", "model_rss_bytes")
HIGHER_IS_BETTER = {"prefill_tps", "decode_tps"}


@dataclass
class BenchRequest:
    bundle: Path
    prompt_lengths: tuple[int, ...] = (32, 128)
    new_tokens: int = 64
    runs: int = 3
    warmup: int = 1
    threads: int = 2
    llama_cpp_gguf: Path | None = None
    quality: bool = False  # also score both sides against the FP32 reference (needs the source checkpoint)


def model_bytes(manifest: dict) -> int:
    """The program plus its external weights file, if any: what the app loads."""
    runtime = manifest["runtime"]
    names = [runtime["program"]] + ([runtime["weights"]] if runtime.get("weights") else [])
    return sum(manifest["files"][name]["size"] for name in names)


def prompt_of_length(tokenizer, n_tokens: int) -> str:
    from runtime_harness.parity import CORPUS

    ids = tokenizer.encode(CORPUS.read_text(encoding="utf-8"))[:n_tokens]
    return tokenizer.decode(ids)


def measure(kind: str, artifact: Path, prompt_file: Path, new_tokens: int, threads: int) -> dict:
    command = [sys.executable, "-m", "runtime_harness.bench_worker", kind, str(artifact), str(prompt_file),
               str(new_tokens), str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800,
                          cwd=Path(__file__).resolve().parent.parent)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeFailure(f"{kind} benchmark run failed ({tail})", path=artifact,
                             fix="run `llama-mobile generate` on it to see the error")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(samples: list[dict]) -> dict:
    out = {}
    for figure in FIGURES:
        values = [s[figure] for s in samples]
        out[figure] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    out["prompt_tokens"] = samples[0]["prompt_tokens"]
    return out


def run_side(kind: str, artifact: Path, prompts: dict[int, Path], request: BenchRequest) -> dict:
    results = {}
    for length, prompt_file in prompts.items():
        for _ in range(request.warmup):
            measure(kind, artifact, prompt_file, request.new_tokens, request.threads)
        samples = [measure(kind, artifact, prompt_file, request.new_tokens, request.threads)
                   for _ in range(request.runs)]
        results[str(length)] = summarise(samples)
    return results


def ratios(ours: dict, peer: dict) -> dict:
    """ours / peer for every figure; for speeds > 1 means faster, for ttft and RSS < 1 means better."""
    return {length: {f: ours[length][f]["median"] / peer[length][f]["median"]
                     for f in FIGURES if peer[length][f]["median"]}
            for length in ours if length in peer}


def run_bench(request: BenchRequest, progress: Progress | None = None) -> dict:
    from llama_mobile.manifest import verify_bundle
    from llama_mobile.tokenizer import Tokenizer

    progress = progress or Progress(STAGES)
    with progress.stage("prepare"):
        manifest = verify_bundle(request.bundle)
        tokenizer = Tokenizer(request.bundle / manifest["tokenizer"]["file"])
        scratch = Path(tempfile.mkdtemp(prefix="llama-mobile-bench-"))
        prompts = {}
        for length in request.prompt_lengths:
            if length + request.new_tokens >= manifest["runtime"]["context_length"]:
                raise ResourceError(f"prompt {length} + {request.new_tokens} new tokens exceed the context",
                                    path=request.bundle, fix="use shorter --prompt-lengths")
            prompts[length] = scratch / f"prompt-{length}.txt"
            prompts[length].write_text(prompt_of_length(tokenizer, length), encoding="utf-8")
    report = {"bundle": str(request.bundle), "threads": request.threads, "runs": request.runs,
              "warmup": request.warmup, "new_tokens": request.new_tokens,
              "size_bytes": {"executorch": model_bytes(manifest)}}
    with progress.stage("executorch", f"{len(prompts)} prompt lengths x {request.runs} runs"):
        report["executorch"] = run_side("executorch", request.bundle, prompts, request)
    if request.llama_cpp_gguf:
        with progress.stage("llama.cpp", str(request.llama_cpp_gguf)):
            report["llama.cpp"] = run_side("llama.cpp", request.llama_cpp_gguf, prompts, request)
            report["size_bytes"]["llama.cpp"] = request.llama_cpp_gguf.stat().st_size
            report["ratios"] = ratios(report["executorch"], report["llama.cpp"])
            report["ratios_size"] = report["size_bytes"]["executorch"] / report["size_bytes"]["llama.cpp"]
        if request.quality:
            with progress.stage("quality", "both sides against the FP32 reference"):
                from runtime_harness.peer_quality import quality_against_peer

                report["quality"] = quality_against_peer(request.bundle, manifest, request.llama_cpp_gguf)
    return report
