"""The native benchmark runner: runtime_harness/native/bench_runner.cpp built against the ExecuTorch
libraries the executorch wheel ships (runtime, XNNPACK, optimized and quantized kernels, thread pool),
which link no torch. A process that runs it holds what an app holds, so its peak RSS compares with
llama.cpp's.

A program calls two LLM ops outside XNNPACK, `llama::update_cache` and `llama::custom_sdpa`. The wheel
ships their kernels only inside libcustom_ops_aot_lib.so, whose DT_NEEDED list names libtorch, so the
runner is linked with one of two kernel sets (KERNELS):

- "executorch" (the default, what an app runs): ExecuTorch's own op_sdpa.cpp and op_update_cache.cpp,
  compiled from native/executorch_src/ (ExecuTorch's sources; PROVENANCE.md says which commit and how
  it was tied to the installed 1.5.1 wheel), with torch's header-only ATen vector headers and nothing of
  torch linked. Android's LlmModule and iOS's runner link these same kernels.
- "own" (an experiment, `bench --runtime native-own-kernels`): native/llm_ops.cpp, the project's kernels
  on ExecuTorch's exported float GEMM. Same logits to 1e-4 (tests/test_native_runner.py), but no phone
  runs them, so their figures are never the headline.

The binary is built once per kernel set, source, ExecuTorch and torch version and compiler, into the
user's cache folder.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from llama_mobile.core.atomic import temporary_path
from llama_mobile.core.errors import ResourceError, RuntimeFailure

SOURCE_DIR = Path(__file__).resolve().parent / "native"
EXECUTORCH_SOURCES = SOURCE_DIR / "executorch_src"


@dataclass(frozen=True)
class Kernels:
    name: str
    sources: tuple[Path, ...]  # compiled with the runner
    headers: tuple[Path, ...]  # hashed into the build key
    include_dirs: tuple[str, ...]  # "executorch_src" and/or "torch": resolved in build_command
    flags: tuple[str, ...]
    label: str  # what the bench report says produced the figures


def _tree(root: Path, suffixes: tuple[str, ...]) -> tuple[Path, ...]:
    return tuple(sorted(p for p in root.rglob("*") if p.suffix in suffixes)) if root.exists() else ()


KERNELS = {
    "executorch": Kernels(
        "executorch",
        (SOURCE_DIR / "bench_runner.cpp",
         EXECUTORCH_SOURCES / "executorch/extension/llm/custom_ops/op_sdpa.cpp",
         EXECUTORCH_SOURCES / "executorch/extension/llm/custom_ops/op_update_cache.cpp"),
        _tree(EXECUTORCH_SOURCES, (".h",)),
        ("executorch_src", "torch"),
        # As ExecuTorch's CMake builds its custom_ops library (Release); no -march, as the wheel's build.
        ("-O3", "-DNDEBUG", "-std=c++17", "-Wno-deprecated-declarations"),
        "XNNPACK + ExecuTorch's own llama::custom_sdpa / llama::update_cache kernels (built from "
        "ExecuTorch's op_sdpa.cpp / op_update_cache.cpp)"),
    "own": Kernels(
        "own",
        (SOURCE_DIR / "bench_runner.cpp", SOURCE_DIR / "llm_ops.cpp"),
        (),
        (),
        # -O3 vectorizes the attention loops for the host's baseline ISA (llm_ops.cpp adds an AVX2 clone).
        ("-O3", "-fopenmp-simd", "-std=c++17", "-Wno-deprecated-declarations"),
        "XNNPACK + llama-mobile's own llama::custom_sdpa / llama::update_cache kernels (llm_ops.cpp; "
        "an experiment: no app runs them)"),
}
DEFAULT_KERNELS = "executorch"
# Registration-only libraries (kernels, the XNNPACK backend) export nothing the runner calls, so the
# linker must keep them.
LIBRARIES = ("executorch", "executorch_backend_xnnpack", "executorch_kernels_optimized",
             "executorch_kernels_quantized", "executorch_threadpool")
# The defines ExecuTorch's CMake package puts on its targets.
DEFINES = ("C10_USING_CUSTOM_GENERATED_MACROS", "ET_USE_THREADPOOL")


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)  # locate without importing (that would load torch)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def executorch_dir() -> Path:
    found = _package_dir("executorch")
    if found is None:
        raise ResourceError("the executorch package is not installed", fix="run ./setup.sh")
    return found


def torch_include() -> Path:
    """torch's headers: ExecuTorch's SDPA kernel uses ATen's header-only vector classes (its CMake adds
    the same folder); no torch library is linked."""
    found = _package_dir("torch")
    include = found / "include" if found else None
    if include is None or not (include / "ATen/cpu/vec/vec.h").exists():
        raise ResourceError("torch's C++ headers (ATen/cpu/vec) are not installed", path=str(include),
                            fix="run ./setup.sh, or bench with --runtime python")
    return include


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++") or shutil.which("c++")


def host_unsupported(kernels: str = DEFAULT_KERNELS) -> str | None:
    """Why this host cannot build the runner with these kernels, or None."""
    if platform.system() != "Linux":
        return "the native runner is built for Linux hosts"
    if kernels == "executorch" and platform.machine() not in ("x86_64", "AMD64"):
        return f"ExecuTorch's kernels are built here for x86-64 hosts, this one is {platform.machine()}"
    return None


def _compiler_version(cxx: str) -> str:
    done = subprocess.run([cxx, "--version"], capture_output=True, text=True)
    return done.stdout.splitlines()[0] if done.returncode == 0 and done.stdout else cxx


def build_command(cxx: str, output: Path, kernels: str = DEFAULT_KERNELS) -> list[str]:
    chosen = KERNELS[kernels]
    root = executorch_dir()
    include = root / "include"
    lib = root / "lib"
    # The kernel sources' folder, the wheel's headers and its portable c10, then torch's (ATen/cpu/vec):
    # the order of ExecuTorch's own CMake.
    first = [f"-I{EXECUTORCH_SOURCES}"] if "executorch_src" in chosen.include_dirs else []
    last = [f"-I{torch_include()}"] if "torch" in chosen.include_dirs else []
    return [cxx, *chosen.flags, *(f"-D{d}" for d in DEFINES), *first, f"-I{include}",
            f"-I{include / 'executorch/runtime/core/portable_type/c10'}", *last,
            *(str(s) for s in chosen.sources), "-o", str(output), f"-L{lib}",
            "-Wl,--no-as-needed", *(f"-l{name}" for name in LIBRARIES), "-Wl,--as-needed",
            f"-Wl,-rpath,{lib}", "-lpthread"]


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "llama-mobile" / "native"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "none"


@functools.cache  # build() runs before every measured run: hash, ask the compiler and read metadata once
def build_key(cxx: str, kernels: str = DEFAULT_KERNELS) -> str:
    chosen = KERNELS[kernels]
    digest = hashlib.sha256(kernels.encode())
    for path in (*chosen.sources, *chosen.headers):
        digest.update(path.read_bytes())
    digest.update(_version("executorch").encode())
    if "torch" in chosen.include_dirs:
        digest.update(_version("torch").encode())
    digest.update(_compiler_version(cxx).encode())
    digest.update(" ".join(build_command(cxx, Path("x"), kernels)).encode())
    return digest.hexdigest()[:16]


def build(kernels: str = DEFAULT_KERNELS) -> Path:
    """The runner binary with these kernels, compiled now if this source/ExecuTorch/compiler has no
    cached build (ExecuTorch's SDPA takes ~15 s to compile)."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels {kernels!r} are not one of {tuple(KERNELS)}")
    cxx = compiler()
    if cxx is None:
        raise ResourceError("no C++ compiler for the native runner", path=str(SOURCE_DIR),
                            fix="install g++ (apt install g++), or pass --runtime python")
    reason = host_unsupported(kernels)
    if reason:
        raise ResourceError(reason, path=str(SOURCE_DIR), fix="pass --runtime python")
    binary = cache_dir() / build_key(cxx, kernels) / "bench_runner"
    if binary.exists():
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    with temporary_path(binary) as tmp:
        done = subprocess.run(build_command(cxx, tmp, kernels), capture_output=True, text=True)
        if done.returncode != 0:
            first_error = next((line for line in done.stderr.splitlines() if "error" in line),
                               done.stderr.strip()[-300:])
            raise RuntimeFailure(f"building the native runner failed: {first_error}", path=str(SOURCE_DIR),
                                 fix="check that the executorch wheel matches pyproject.toml's pin, or pass "
                                     "--runtime python")
    return binary


def run(program: Path, token_ids: list[int], new_tokens: int, threads: int, *, weights: Path | None = None,
        logits: Path | None = None, binary: Path | None = None, warmup: int = 0) -> dict:
    """One generation: prefill token_ids, then greedy decode, after `warmup` untimed generations of the
    same prompt in the same process. Returns the runner's JSON figures."""

    binary = binary or build()
    with tempfile.NamedTemporaryFile("w", suffix=".tokens", delete=False) as handle:
        handle.write(" ".join(str(t) for t in token_ids))
    command = [str(binary), str(program), "--tokens", handle.name, "--new-tokens", str(new_tokens),
               "--threads", str(threads), "--warmup", str(warmup)]
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
