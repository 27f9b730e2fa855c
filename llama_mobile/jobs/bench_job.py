"""`llama-mobile bench`: speed, memory and size of a bundle, optionally against llama.cpp in the same run.

Every measurement runs in a fresh process (peak RSS is the artifact's own), after warm-up runs;
figures are medians with min-max spread. Ratios are ours / llama.cpp's, both from this run, with the
two sides' runs interleaved so that a machine whose speed drifts (a shared VM) shifts both alike.
Our side runs in the native runner (ExecuTorch's C++ runtime alone, as in an app) when a C++ compiler
is present, else in ExecuTorch's Python bindings (TextLLMRunner), whose process also holds torch.
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from llama_mobile.core.bundle import Bundle, verify_bundle
from llama_mobile.core.errors import ResourceError, RuntimeFailure, UsageError
from llama_mobile.core.manifest import Manifest
from llama_mobile.core.progress import Progress
from llama_mobile.core.reports import OURS, PEER, BenchReport
from llama_mobile.core.tokenizer import Tokenizer
from llama_mobile.jobs.base import Job
from llama_mobile.runtime_harness import native_runner
from llama_mobile.runtime_harness.gguf_peer import CALIBRATION_TEXT, PeerType, peers_for_bundle
from llama_mobile.runtime_harness.parity import CORPUS
from llama_mobile.runtime_harness.peer_quality import quality_table

STAGES = ("prepare", "peers", "measure", "quality")
RUNTIMES = ("auto", "native", "python")
FIGURES = ("ttft_ms", "prefill_tps", "decode_tps", "peak_rss_bytes", "model_rss_bytes")


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
    runtime: str = "auto"  # our side: "native" runner, "python" bindings, or native when a compiler exists
    # Quality against a list of llama.cpp types, each made by llama-quantize from the bundle's source
    # (`llama-mobile peer build`); scored on the parity text and on every text of `texts`.
    peer_types: tuple[PeerType, ...] = ()
    texts: tuple[Path, ...] = ()
    positions: int = 256
    quality_only: bool = False  # no speed runs: the quality table alone
    calibration: Path = CALIBRATION_TEXT  # what llama-imatrix reads for the +imatrix peers
    peer_dir: Path | None = None  # where the peer GGUFs are kept (default: a fresh temporary folder)


@dataclass
class Prompt:
    text_file: Path  # for TextLLMRunner and llama.cpp, which tokenize it themselves
    token_ids: list[int]  # for the native runner


def model_bytes(manifest: Manifest) -> int:
    """The program plus its external weights file, if any: what the app loads."""
    names = [manifest.runtime.program] + ([manifest.runtime.weights] if manifest.runtime.weights else [])
    return sum(manifest.files[name].size for name in names)


def prompt_of_length(tokenizer, n_tokens: int) -> list[int]:

    return tokenizer.encode(CORPUS.read_text(encoding="utf-8"))[:n_tokens]


def native_unsupported(backend: str, dtype: str) -> str | None:
    """Why the native runner cannot run this bundle, or None: it links XNNPACK only, and its two LLM
    ops are float32."""
    if backend != "xnnpack":
        return f"the native runner has no {backend} backend"
    if dtype != "fp32":
        return f"the native runner's attention ops are float32, this program is {dtype}"
    return None


def resolve_runtime(requested: str, backend: str, dtype: str, bundle: Path | None = None) -> str:

    if requested not in RUNTIMES:
        raise ValueError(f"runtime {requested!r} is not one of {RUNTIMES}")
    if requested == "auto":
        return "native" if native_runner.compiler() and native_unsupported(backend, dtype) is None else "python"
    reason = native_unsupported(backend, dtype) if requested == "native" else None
    if reason:
        raise UsageError(reason, path=str(bundle) if bundle else None, fix="use --runtime python")
    return requested


def measure(kind: str, artifact: Bundle | Path, prompt: Prompt, new_tokens: int, threads: int) -> dict:
    """artifact: the bundle (executorch, native) or the GGUF (llama.cpp)."""
    if kind == "native":
        return native_runner.run(artifact.program, prompt.token_ids, new_tokens, threads, weights=artifact.weights)
    if isinstance(artifact, Bundle):
        artifact = artifact.path
    command = [sys.executable, "-m", "llama_mobile.runtime_harness.bench_worker", kind, str(artifact),
               str(prompt.text_file), str(new_tokens), str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
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


def run_sides(sides: dict[str, tuple[str, Path]], prompts: dict[int, Prompt], request: BenchRequest,
              progress: Progress) -> dict[str, dict]:
    """sides: report key -> (worker kind, artifact). Per prompt length: warm-ups, then run i of every
    side before run i + 1 of any."""
    samples: dict[str, dict[str, list]] = {side: {} for side in sides}
    for length, prompt in prompts.items():
        for _ in range(request.warmup):
            for kind, artifact in sides.values():
                measure(kind, artifact, prompt, request.new_tokens, request.threads)
        for run in range(request.runs):
            progress.note(f"prompt {length}: run {run + 1} of {request.runs}")
            for side, (kind, artifact) in sides.items():
                samples[side].setdefault(str(length), []).append(
                    measure(kind, artifact, prompt, request.new_tokens, request.threads))
    return {side: {length: summarise(runs) for length, runs in by_length.items()}
            for side, by_length in samples.items()}


def ratios(ours: dict, peer: dict) -> dict:
    """ours / peer for every figure; for speeds > 1 means faster, for ttft and RSS < 1 means better."""
    return {length: {f: ours[length][f]["median"] / peer[length][f]["median"]
                     for f in FIGURES if peer[length][f]["median"]}
            for length in ours if length in peer}


@dataclass
class Prepared:
    bundle: Bundle
    prompts: dict[int, Prompt]
    runtime: str


class BenchJob(Job):
    STAGES = STAGES

    def run(self) -> BenchReport:
        request, progress = self.request, self.progress
        with progress.stage("prepare"):
            prepared = self.prepare()
        peers: dict = {}
        if request.peer_types:
            labels = ", ".join(p.label for p in request.peer_types)
            with progress.stage("peers", f"llama-quantize from the bundle's source: {labels}"):
                scratch = request.peer_dir or Path(tempfile.mkdtemp(prefix="llama-mobile-peers-"))
                scratch.mkdir(parents=True, exist_ok=True)
                peers = peers_for_bundle(prepared.bundle.manifest, list(request.peer_types), scratch,
                                         threads=request.threads, calibration=request.calibration,
                                         emit=progress.note)
        if request.quality_only:
            report = BenchReport(bundle=str(request.bundle), runtime="none", threads=request.threads, runs=0,
                                 warmup=0, new_tokens=0,
                                 size_bytes={OURS: model_bytes(prepared.bundle.manifest)})
        else:
            sides = {OURS: ("native" if prepared.runtime == "native" else "executorch", prepared.bundle)}
            if request.llama_cpp_gguf:
                sides[PEER] = ("llama.cpp", request.llama_cpp_gguf)
            with progress.stage("measure", f"{' and '.join(sides)}: {len(prepared.prompts)} prompt lengths x "
                                           f"{request.runs} runs"):
                report = self.measure(prepared, sides)
        if request.quality:
            if request.llama_cpp_gguf:
                peers[request.llama_cpp_gguf.stem] = request.llama_cpp_gguf
            texts = [None, *request.texts]
            with progress.stage("quality", f"ours and {len(peers)} llama.cpp files against the FP32 reference "
                                           f"on {len(texts)} texts"):
                report.quality = quality_table(prepared.bundle, peers, texts, request.positions,
                                               size_bytes=report.size_bytes[OURS],
                                               imatrix_text=request.calibration, emit=progress.note)
        return report

    def prepare(self) -> Prepared:
        request = self.request
        bundle = verify_bundle(request.bundle)
        tokenizer = Tokenizer(bundle.tokenizer)
        scratch = Path(tempfile.mkdtemp(prefix="llama-mobile-bench-"))
        prompts = {}
        if request.quality_only:
            return Prepared(bundle, prompts, "none")
        for length in request.prompt_lengths:
            if length + request.new_tokens >= bundle.context_length:
                raise ResourceError(f"prompt {length} + {request.new_tokens} new tokens exceed the context",
                                    path=request.bundle, fix="use shorter --prompt-lengths")
            ids = prompt_of_length(tokenizer, length)
            prompts[length] = Prompt(scratch / f"prompt-{length}.txt", ids)
            prompts[length].text_file.write_text(tokenizer.decode(ids), encoding="utf-8")
        runtime = resolve_runtime(request.runtime, bundle.backend, bundle.manifest.dtype,
                                  request.bundle)
        if runtime == "native":
            self.progress.note("building the native runner (once per ExecuTorch version)")
            native_runner.build()
        return Prepared(bundle, prompts, runtime)

    def measure(self, prepared: Prepared, sides: dict[str, tuple[str, Bundle | Path]]) -> BenchReport:
        request = self.request
        report = BenchReport(bundle=str(request.bundle), runtime=prepared.runtime, threads=request.threads,
                             runs=request.runs, warmup=request.warmup, new_tokens=request.new_tokens,
                             size_bytes={OURS: model_bytes(prepared.bundle.manifest)},
                             figures=run_sides(sides, prepared.prompts, request, self.progress))
        if request.llama_cpp_gguf:
            report.size_bytes[PEER] = request.llama_cpp_gguf.stat().st_size
            report.ratios = ratios(report.figures[OURS], report.figures[PEER])
        return report


def run_bench(request: BenchRequest, progress: Progress | None = None) -> BenchReport:
    return BenchJob(request, progress).run()
