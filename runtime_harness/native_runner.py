"""The native benchmark runner: runtime_harness/native/*.cpp built against the ExecuTorch libraries the
executorch wheel ships (runtime, XNNPACK, optimized and quantized kernels, thread pool), which link
no torch. A process that runs it holds what an app holds, so its peak RSS compares with llama.cpp's.

The two LLM ops a program calls outside XNNPACK (update_cache, custom_sdpa) ship only in a library
linked with libtorch, so llm_ops.cpp implements them on ExecuTorch's exported float GEMM: the same
logits as ExecuTorch's kernels to 1e-4 (tests/test_native_runner.py), within ~10-25% of their speed.

The binary is built once per source, ExecuTorch version and compiler, into the user's cache folder.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from llama_mobile.core.atomic import temporary_path
from llama_mobile.core.errors import ResourceError, RuntimeFailure

SOURCE_DIR = Path(__file__).resolve().parent / "native"
SOURCES = ("bench_runner.cpp", "llm_ops.cpp")
# Registration-only libraries (kernels, the XNNPACK backend) export nothing the runner calls, so the
# linker must keep them.
LIBRARIES = ("executorch", "executorch_backend_xnnpack", "executorch_kernels_optimized",
             "executorch_kernels_quantized", "executorch_threadpool")
# The defines ExecuTorch's CMake package puts on its targets.
DEFINES = ("C10_USING_CUSTOM_GENERATED_MACROS", "ET_USE_THREADPOOL")
# -O3 vectorizes the attention loops for the host's baseline ISA, so the binary runs on any x86-64 or
# arm64 machine that shares the cache folder; XNNPACK picks its kernels at run time either way.
FLAGS = ("-O3", "-fopenmp-simd", "-std=c++17")


def executorch_dir() -> Path:
    spec = importlib.util.find_spec("executorch")  # locate without importing (that would load torch)
    if spec is None or not spec.submodule_search_locations:
        raise ResourceError("the executorch package is not installed", fix="run ./setup.sh")
    return Path(list(spec.submodule_search_locations)[0])


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++") or shutil.which("c++")


def _compiler_version(cxx: str) -> str:
    done = subprocess.run([cxx, "--version"], capture_output=True, text=True)
    return done.stdout.splitlines()[0] if done.returncode == 0 and done.stdout else cxx


def build_command(cxx: str, output: Path) -> list[str]:
    root = executorch_dir()
    include = root / "include"
    lib = root / "lib"
    return [cxx, *FLAGS, *(f"-D{d}" for d in DEFINES), f"-I{include}",
            f"-I{include / 'executorch/runtime/core/portable_type/c10'}",
            *(str(SOURCE_DIR / s) for s in SOURCES), "-o", str(output), f"-L{lib}",
            "-Wl,--no-as-needed", *(f"-l{name}" for name in LIBRARIES), "-Wl,--as-needed",
            f"-Wl,-rpath,{lib}", "-lpthread"]


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "llama-mobile" / "native"


@functools.cache  # build() runs before every measured run: hash, ask the compiler and read metadata once
def build_key(cxx: str) -> str:
    digest = hashlib.sha256()
    for name in SOURCES:
        digest.update((SOURCE_DIR / name).read_bytes())
    digest.update(importlib.metadata.version("executorch").encode())
    digest.update(_compiler_version(cxx).encode())
    digest.update(" ".join(build_command(cxx, Path("x"))).encode())
    return digest.hexdigest()[:16]


def build() -> Path:
    """The runner binary, compiled now if this source/ExecuTorch/compiler has no cached build."""
    cxx = compiler()
    if cxx is None:
        raise ResourceError("no C++ compiler for the native runner", path=str(SOURCE_DIR),
                            fix="install g++ (apt install g++), or pass --runtime python")
    binary = cache_dir() / build_key(cxx) / "bench_runner"
    if binary.exists():
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    with temporary_path(binary) as tmp:
        done = subprocess.run(build_command(cxx, tmp), capture_output=True, text=True)
        if done.returncode != 0:
            first_error = next((line for line in done.stderr.splitlines() if "error" in line),
                               done.stderr.strip()[-300:])
            raise RuntimeFailure(f"building the native runner failed: {first_error}", path=str(SOURCE_DIR),
                                 fix="check that the executorch wheel matches pyproject.toml's pin")
    return binary


def run(program: Path, token_ids: list[int], new_tokens: int, threads: int, *, weights: Path | None = None,
        logits: Path | None = None, binary: Path | None = None) -> dict:
    """One generation: prefill token_ids, then greedy decode. Returns the runner's JSON figures."""

    binary = binary or build()
    with tempfile.NamedTemporaryFile("w", suffix=".tokens", delete=False) as handle:
        handle.write(" ".join(str(t) for t in token_ids))
    command = [str(binary), str(program), "--tokens", handle.name, "--new-tokens", str(new_tokens),
               "--threads", str(threads)]
    if weights:
        command += ["--data", str(weights)]
    if logits:
        command += ["--logits", str(logits)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    finally:
        os.unlink(handle.name)
    if done.returncode != 0:
        # ExecuTorch's error lines ("E 00:00:00.000 file.cpp:12] why") say why; the runner's own says where.
        errors = [line.split("] ", 1)[-1] for line in done.stderr.splitlines() if line.startswith("E ")]
        ours = [line for line in done.stderr.splitlines() if line.startswith("bench_runner:")]
        if done.returncode < 0:
            ours.append(f"crashed with {signal.Signals(-done.returncode).name}: the program may be damaged")
        reason = "; ".join(errors[:1] + ours[-1:]) or "no output"
        raise RuntimeFailure(f"the native runner failed ({reason})", path=str(program),
                             fix="run `llama-mobile generate` on the bundle, or bench it with --runtime python")
    return json.loads(done.stdout.strip().splitlines()[-1])
