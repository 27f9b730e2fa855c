"""`llama-mobile bench`: speed, memory and size of a bundle, optionally against llama.cpp in the same run.

Every measurement runs in a fresh process (peak RSS is the artifact's own), after warm-up runs;
figures are medians with min-max spread. Ratios are ours / llama.cpp's, both from this run, with the
two sides' runs interleaved so that a machine whose speed drifts (a shared VM) shifts both alike.

Our side (RUNTIMES), as an app runs it unless asked otherwise:
- "native" (what "auto" picks where a C++ compiler is found): ExecuTorch's C++ runtime with XNNPACK and
  ExecuTorch's own llama::custom_sdpa / update_cache kernels, built from ExecuTorch's sources into a
  runner that holds no torch (runtime_harness/native_runner.py). Android's LlmModule and iOS's runner
  link the same kernels, so these are the headline figures, and process peak RSS compares with
  llama.cpp's directly.
- "python": ExecuTorch's TextLLMRunner through the Python bindings: the same kernels, torch in the
  process; "model RSS" is its like-for-like memory figure. "auto" falls back to it without a compiler.
- "native-own-kernels": the native runner with llama-mobile's own kernels for the two LLM ops
  (native/llm_ops.cpp). An experiment, labelled as such in every table: no app runs those kernels.
Each of ours does one untimed warm-up generation in its process before the timed one, as llama-bench
warms up before it times.

The peer is llama.cpp's own llama-bench from `llama-mobile peer build` (runtime_harness/llama_bench.py),
on the same weights requantized by llama.cpp, with the same thread count. Every report names the
runtime and kernels of each side (BenchReport.setup).
"""
from __future__ import annotations

import importlib.metadata
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
from llama_mobile.runtime_harness import llama_bench, native_runner
from llama_mobile.runtime_harness.gguf_peer import CALIBRATION_TEXT, PeerType, peers_for_bundle
from llama_mobile.runtime_harness.llama_cpp_build import bench_tool
from llama_mobile.runtime_harness.parity import CORPUS
from llama_mobile.runtime_harness.peer_quality import quality_table

STAGES = ("prepare", "peers", "measure", "quality")
RUNTIMES = ("auto", "native", "python", "native-own-kernels")
# our runtime -> the native runner's kernel set (native_runner.KERNELS); "python" runs no native runner
NATIVE_KERNELS = {"native": "executorch", "native-own-kernels": "own"}
FIGURES = ("ttft_ms", "prefill_tps", "decode_tps", "peak_rss_bytes", "model_rss_bytes")
PEER_KIND = "llama-bench"  # the worker kind of the peer side
OUR_TIMING = ("one untimed warm-up generation of the same prompt in the process, then prefill of the P prompt "
              "tokens (time to first token: prefill and the first token) and N-1 greedy decode steps")


@dataclass
class BenchRequest:
    bundle: Path
    prompt_lengths: tuple[int, ...] = (32, 128)
    new_tokens: int = 64
    runs: int = 3
    warmup: int = 1  # untimed fresh-process runs of each side per prompt length (each run also warms up inside)
    threads: int = 2
    llama_cpp_gguf: Path | None = None
    quality: bool = False  # also score both sides against the FP32 reference (needs the source checkpoint)
    runtime: str = "auto"  # our side: one of RUNTIMES (see the module docstring)
    # Quality against a list of llama.cpp types, each made by llama-quantize from the bundle's source
    # (`llama-mobile peer build`); scored on the parity text and on every text of `texts`.
    peer_types: tuple[PeerType, ...] = ()
    texts: tuple[Path, ...] = ()
    positions: int = 256
    whole_text: bool = False  # quality over every window of `positions` tokens of each text, pooled
    quality_only: bool = False  # no speed runs: the quality table alone
    calibration: Path = CALIBRATION_TEXT  # what llama-imatrix reads for the +imatrix peers
    peer_dir: Path | None = None  # where the peer GGUFs are kept (default: a fresh temporary folder)


@dataclass
class Prompt:
    text_file: Path  # for TextLLMRunner, which tokenizes it itself
    token_ids: list[int]  # for the native runner; llama-bench takes the count only


def model_bytes(manifest: Manifest) -> int:
    """The program plus its external weights file, if any: what the app loads."""
    names = [manifest.runtime.program] + ([manifest.runtime.weights] if manifest.runtime.weights else [])
    return sum(manifest.files[name].size for name in names)


PROMPT_TEXTS = ("alice.txt", "heldout.txt", "calibration.txt")  # a long prompt reads on into the next text


def prompt_of_length(tokenizer, n_tokens: int) -> list[int]:
    """The first ``n_tokens`` tokens of the shipped texts, one after another (repeated past their end: about
    9,000 tokens before the first repeat)."""
    ids: list[int] = []
    while len(ids) < n_tokens:
        for name in PROMPT_TEXTS:
            ids += tokenizer.encode((CORPUS.parent / name).read_text(encoding="utf-8") + "\n\n")
    return ids[:n_tokens]


def native_unsupported(backend: str, dtype: str) -> str | None:
    """Why the native runner cannot run this bundle, or None: it links XNNPACK only, reads float32
    logits, and its parity with the Python runtime is checked on float32 programs."""
    if backend != "xnnpack":
        return f"the native runner has no {backend} backend"
    if dtype != "fp32":
        return f"the native runner runs float32 programs, this program is {dtype}"
    return None


def resolve_runtime(requested: str, backend: str, dtype: str, bundle: Path | None = None) -> str:
    """The runtime our side runs in: "auto" is the native runner with ExecuTorch's kernels where it can be
    built and can run this bundle, else TextLLMRunner."""
    if requested not in RUNTIMES:
        raise ValueError(f"runtime {requested!r} is not one of {RUNTIMES}")
    if requested == "auto":
        native = native_runner.compiler() and native_runner.host_unsupported() is None \
            and native_unsupported(backend, dtype) is None
        return "native" if native else "python"
    if requested in NATIVE_KERNELS:
        reason = native_unsupported(backend, dtype) or native_runner.host_unsupported(NATIVE_KERNELS[requested])
        if reason:
            raise UsageError(reason, path=str(bundle) if bundle else None, fix="use --runtime python")
    return requested


def executorch_version() -> str:
    try:
        return importlib.metadata.version("executorch").split("+")[0]
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def describe_ours(runtime: str) -> dict[str, str]:
    """The runtime, kernels, timing and memory of our side, as the bench report names them."""
    version = executorch_version()
    if runtime == "python":
        return {"runtime": f"ExecuTorch {version} TextLLMRunner through the Python bindings (torch in the process)",
                "kernels": "XNNPACK + ExecuTorch's own llama::custom_sdpa / llama::update_cache kernels (the wheel's "
                           "libcustom_ops_aot_lib.so)",
                "timing": OUR_TIMING + "; TextLLMRunner's own clock, whole milliseconds, tokenizing included",
                "memory": "peak RSS includes the interpreter, torch and the bindings (~355 MiB before the model): "
                          "model RSS (peak minus the process before loading) is the like-for-like figure"}
    kernels = native_runner.KERNELS[NATIVE_KERNELS[runtime]]
    experiment = " [experiment: not the kernels an app runs]" if runtime == "native-own-kernels" else ""
    return {"runtime": f"ExecuTorch {version} C++ runtime (extension/module) in llama-mobile's bench_runner: no "
                       f"Python, no torch in the process{experiment}",
            "kernels": kernels.label,
            "timing": OUR_TIMING + "; token ids in, no tokenizing",
            "memory": "peak RSS: the runner process's VmHWM, what an app would hold; model RSS: VmHWM minus the "
                      "process before the program loads"}


def measure(kind: str, artifact: Bundle | Path, prompt: Prompt, new_tokens: int, threads: int) -> dict:
    """One run of one side in fresh processes. kind: "native" / "native-own-kernels" (the native runner on
    the bundle), "python" (TextLLMRunner on the bundle) or PEER_KIND (llama-bench on the GGUF)."""
    if kind in NATIVE_KERNELS:
        return native_runner.run(artifact.program, prompt.token_ids, new_tokens, threads, weights=artifact.weights,
                                 binary=native_runner.build(NATIVE_KERNELS[kind]), warmup=1)
    if kind == PEER_KIND:
        return llama_bench.measure(artifact, len(prompt.token_ids), new_tokens, threads)
    if isinstance(artifact, Bundle):
        artifact = artifact.path
    command = [sys.executable, "-m", "llama_mobile.runtime_harness.bench_worker", "executorch", str(artifact),
               str(prompt.text_file), str(new_tokens), str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeFailure(f"TextLLMRunner benchmark run failed ({tail})", path=artifact,
                             fix="run `llama-mobile generate` on it to see the error")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(samples: list[dict]) -> dict:
    """Median, min and max of every figure the runs have (the peer has no model RSS)."""
    out = {}
    for figure in FIGURES:
        values = [s[figure] for s in samples if s.get(figure) is not None]
        if values:
            out[figure] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    out["prompt_tokens"] = samples[0]["prompt_tokens"]
    return out


def run_sides(sides: dict[str, tuple[str, Path]], prompts: dict[int, Prompt], request: BenchRequest,
              progress: Progress) -> tuple[dict[str, dict], dict[str, dict]]:
    """sides: report key -> (worker kind, artifact). Per prompt length: warm-ups, then run i of every
    side before run i + 1 of any. Returns (side -> length -> summary, side -> its first run)."""
    samples: dict[str, dict[str, list]] = {side: {} for side in sides}
    first: dict[str, dict] = {}
    for length, prompt in prompts.items():
        for _ in range(request.warmup):
            for side, (kind, artifact) in sides.items():
                first.setdefault(side, measure(kind, artifact, prompt, request.new_tokens, request.threads))
        for run in range(request.runs):
            progress.note(f"prompt {length}: run {run + 1} of {request.runs}")
            for side, (kind, artifact) in sides.items():
                result = measure(kind, artifact, prompt, request.new_tokens, request.threads)
                first.setdefault(side, result)
                samples[side].setdefault(str(length), []).append(result)
    summaries = {side: {length: summarise(runs) for length, runs in by_length.items()}
                 for side, by_length in samples.items()}
    return summaries, first


def ratios(ours: dict, peer: dict) -> dict:
    """ours / peer for every figure both sides have; for speeds > 1 means faster, for ttft and RSS < 1
    means better."""
    return {length: {f: ours[length][f]["median"] / peer[length][f]["median"]
                     for f in FIGURES if f in ours[length] and f in peer[length] and peer[length][f]["median"]}
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
            sides = {OURS: (prepared.runtime, prepared.bundle)}
            if request.llama_cpp_gguf:
                sides[PEER] = (PEER_KIND, request.llama_cpp_gguf)
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
                                               imatrix_text=request.calibration, whole_text=request.whole_text,
                                               emit=progress.note)
        return report

    def prepare(self) -> Prepared:
        request = self.request
        bundle = verify_bundle(request.bundle)
        tokenizer = Tokenizer(bundle.tokenizer)
        scratch = Path(tempfile.mkdtemp(prefix="llama-mobile-bench-"))
        prompts = {}
        if request.quality_only:
            return Prepared(bundle, prompts, "none")
        if request.llama_cpp_gguf:
            bench_tool()  # the peer's llama-bench, before anything is measured
        for length in request.prompt_lengths:
            if length + request.new_tokens >= bundle.context_length:
                raise ResourceError(f"prompt {length} + {request.new_tokens} new tokens exceed the context",
                                    path=request.bundle, fix="use shorter --prompt-lengths")
            ids = prompt_of_length(tokenizer, length)
            prompts[length] = Prompt(scratch / f"prompt-{length}.txt", ids)
            prompts[length].text_file.write_text(tokenizer.decode(ids), encoding="utf-8")
        runtime = resolve_runtime(request.runtime, bundle.backend, bundle.manifest.dtype,
                                  request.bundle)
        if runtime in NATIVE_KERNELS:
            kernels = NATIVE_KERNELS[runtime]
            self.progress.note(f"building the native runner with the {kernels} kernels (once per version)")
            native_runner.build(kernels)
        elif request.runtime == "auto":
            self.progress.note("our side runs in TextLLMRunner: no C++ compiler, or a bundle the native runner "
                               "does not run")
        return Prepared(bundle, prompts, runtime)

    def measure(self, prepared: Prepared, sides: dict[str, tuple[str, Bundle | Path]]) -> BenchReport:
        request = self.request
        figures, first = run_sides(sides, prepared.prompts, request, self.progress)
        report = BenchReport(bundle=str(request.bundle), runtime=prepared.runtime, threads=request.threads,
                             runs=request.runs, warmup=request.warmup, new_tokens=request.new_tokens,
                             size_bytes={OURS: model_bytes(prepared.bundle.manifest)}, figures=figures,
                             setup={OURS: describe_ours(prepared.runtime)})
        if request.llama_cpp_gguf:
            report.setup[PEER] = llama_bench.describe(bench_tool()[1], first.get(PEER))
            report.size_bytes[PEER] = request.llama_cpp_gguf.stat().st_size
            report.ratios = ratios(report.figures[OURS], report.figures[PEER])
        return report


def run_bench(request: BenchRequest, progress: Progress | None = None) -> BenchReport:
    return BenchJob(request, progress).run()
