"""llama.cpp built once from llama-cpp-python's sdist, with portable ISA flags, for the bench peer.

    llama-mobile peer build

1. `pip download --no-deps --no-binary :all: llama-cpp-python==VERSION` into
   ~/.cache/llama-mobile/llama.cpp-VERSION/ (or $LLAMA_MOBILE_CACHE), unpacked there.
2. cmake on the vendored llama.cpp with `-DGGML_NATIVE=OFF` and every x86 ISA option set explicitly from
   the flags /proc/cpuinfo reports (AVX2/FMA/F16C, AVX-512 F/BW/VL/DQ/CD, VNNI, BF16), never
   `-march=native` and never AMX: a native build dies with SIGILL in llama-bench and llama-imatrix on hosts
   (VMs) that report AMX without granting its tile state. Shared libraries, Release, no curl/OpenSSL.
   Targets: libllama (+ libggml*), llama-quantize, llama-imatrix, llama-bench; `-j2` under `nice 10`.
   (llama-cli links the whole server in this version, so it is not built.)
3. The sdist's pure-Python `llama_cpp/` package is copied beside the build and loads the library through
   `LLAMA_CPP_LIB_PATH` (llama_cpp/llama_cpp.py: `_base_path` is that folder when the variable is set), so
   the llama.cpp logits come from the same library as the quantizer: no second compile.
4. build.json records the version, the cmake command, the ISA options and the CPU flags they came from.

`bench --vs-llama-cpp` times llama.cpp with this build's own `llama-bench` (runtime_harness/llama_bench.py),
so the peer's figures come from llama.cpp's C++ loop with every ISA extension this CPU runs (less AMX),
not from a Python binding's loop.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llama_mobile.core.atomic import temporary_path
from llama_mobile.core.errors import ResourceError

VERSION = "0.3.36"  # llama-cpp-python; its sdist vendors the matching llama.cpp
TARGETS = ("llama", "llama-quantize", "llama-imatrix", "llama-bench")
TOOLS = ("llama-quantize", "llama-imatrix", "llama-bench")
NICE = 10
JOBS = 2

# ggml's x86 options (ggml/CMakeLists.txt) -> the /proc/cpuinfo flags each one needs. All are set
# explicitly, ON or OFF, so nothing is left to ggml's defaults or to the compiler's idea of the host.
ISA_OPTIONS: dict[str, tuple[str, ...]] = {
    "GGML_SSE42": ("sse4_2",),
    "GGML_AVX": ("avx",),
    "GGML_AVX2": ("avx2",),
    "GGML_FMA": ("fma",),
    "GGML_F16C": ("f16c",),
    "GGML_BMI2": ("bmi2",),
    "GGML_AVX_VNNI": ("avx_vnni",),
    # ggml's AVX512 option compiles with -mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw
    "GGML_AVX512": ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
    "GGML_AVX512_VBMI": ("avx512f", "avx512vbmi"),
    "GGML_AVX512_VNNI": ("avx512f", "avx512_vnni"),
    "GGML_AVX512_BF16": ("avx512f", "avx512_bf16"),
}
NEVER = ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")  # SIGILL where a VM reports AMX
FIXED = ("-DGGML_NATIVE=OFF", "-DBUILD_SHARED_LIBS=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
         "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
         "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_BUILD_TOOLS=ON",
         "-DGGML_BACKEND_DL=OFF", "-DGGML_CPU_ALL_VARIANTS=OFF", "-DGGML_OPENMP=OFF")


def cache_root() -> Path:
    return Path(os.environ.get("LLAMA_MOBILE_CACHE") or Path.home() / ".cache" / "llama-mobile")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The flags of the first processor in /proc/cpuinfo (x86 "flags", Arm "Features")."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def isa_options(flags: set[str]) -> dict[str, bool]:
    options = {name: all(f in flags for f in needs) for name, needs in ISA_OPTIONS.items()}
    options.update({name: False for name in NEVER})
    return options


def configure_command(source: Path, build: Path, flags: set[str]) -> list[str]:
    """cmake's configure line: portable, the ISA options of these CPU flags, no -march=native."""
    isa = [f"-D{name}={'ON' if on else 'OFF'}" for name, on in isa_options(flags).items()]
    return ["cmake", "-S", str(source), "-B", str(build), *FIXED, *isa]


def build_command(build: Path, jobs: int = JOBS, targets: tuple[str, ...] = TARGETS) -> list[str]:
    return ["cmake", "--build", str(build), "--config", "Release", "-j", str(jobs), "--target", *targets]


def niced(command: list[str], level: int = NICE) -> list[str]:
    return ["nice", "-n", str(level), *command] if shutil.which("nice") else command


def require_toolchain() -> None:
    missing = [name for name, candidates in (("cmake", ("cmake",)), ("a C compiler", ("cc", "gcc", "clang")),
                                             ("a C++ compiler", ("c++", "g++", "clang++")))
               if not any(shutil.which(c) for c in candidates)]
    if missing:
        raise ResourceError(f"building llama.cpp needs {' and '.join(missing)}",
                            fix="install cmake and build-essential (apt-get install cmake build-essential)")


@dataclass
class LlamaCppBuild:
    root: Path  # ~/.cache/llama-mobile/llama.cpp-VERSION
    version: str = VERSION

    @property
    def source(self) -> Path:  # the unpacked sdist
        return self.root / "src" / f"llama_cpp_python-{self.version}"

    @property
    def build_dir(self) -> Path:
        return self.root / "build"

    @property
    def lib_dir(self) -> Path:  # libllama.so and libggml*.so
        return self.build_dir / "bin"

    @property
    def python_dir(self) -> Path:  # holds llama_cpp/, the sdist's pure-Python package
        return self.root / "python"

    @property
    def record(self) -> Path:
        return self.root / "build.json"

    def tool(self, name: str) -> Path:
        return self.lib_dir / name

    @property
    def complete(self) -> bool:
        return (self.record.exists() and (self.python_dir / "llama_cpp" / "__init__.py").exists()
                and any(self.lib_dir.glob("libllama.*")) and all(self.tool(t).exists() for t in TOOLS))

    def info(self) -> dict:
        return json.loads(self.record.read_text())


def default_build(version: str = VERSION) -> LlamaCppBuild:
    return LlamaCppBuild(cache_root() / f"llama.cpp-{version}", version)


def find_build(version: str = VERSION) -> LlamaCppBuild | None:
    build = default_build(version)
    return build if build.complete else None


def fetch_sdist(build: LlamaCppBuild, emit: Callable[[str], None]) -> Path:
    """The sdist, downloaded once (or left where a previous run put it), unpacked under src/."""
    if (build.source / "vendor" / "llama.cpp" / "CMakeLists.txt").exists():
        return build.source
    build.root.mkdir(parents=True, exist_ok=True)
    archive = build.root / f"llama_cpp_python-{build.version}.tar.gz"
    if not archive.exists():
        emit(f"downloading the llama-cpp-python {build.version} sdist")
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                               "--no-build-isolation", "-d", str(build.root), f"llama-cpp-python=={build.version}"],
                              capture_output=True, text=True)
        if done.returncode != 0 or not archive.exists():
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ResourceError(f"could not download llama-cpp-python {build.version} ({tail})",
                                fix=f"put llama_cpp_python-{build.version}.tar.gz in {build.root}")
    emit(f"unpacking {archive.name}")
    (build.root / "src").mkdir(exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(build.root / "src", filter="data")
    return build.source


def run_logged(command: list[str], log, emit: Callable[[str], None], what: str) -> None:
    """Run, appending all output to the log; emit cmake's percentage lines, at most one per percent."""
    log.write("$ " + " ".join(command) + "\n")
    log.flush()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last, tail = None, []
    for line in process.stdout:
        log.write(line)
        tail = (tail + [line.rstrip()])[-20:]
        if line.startswith("[") and "%]" in line[:7]:
            percent = line[1:line.index("%]")].strip()
            if percent != last:
                last = percent
                emit(f"{what}: {line.strip()[:110]}")
    if process.wait() != 0:
        errors = [t for t in tail if "error" in t.lower()] or tail or ["no output"]
        raise ResourceError(f"{what} failed: {errors[-1][:200]}", path=log.name,
                            fix="read the build log; `llama-mobile peer build --force` starts over")


# llama-cpp-python's pure-Python dependencies (its pyproject) that the project's environment may lack;
# installed beside its package in the build folder, never into the environment.
PYTHON_DEPENDENCIES = {"diskcache": "diskcache>=5.6.1", "jinja2": "jinja2>=2.11.3",
                       "typing_extensions": "typing-extensions>=4.5.0", "numpy": "numpy>=1.20.0"}


def install_python_dependencies(build: LlamaCppBuild, emit: Callable[[str], None]) -> None:
    missing = [spec for module, spec in PYTHON_DEPENDENCIES.items()
               if importlib.util.find_spec(module) is None and not (build.python_dir / module).exists()]
    if not missing:
        return
    emit(f"installing {', '.join(missing)} into {build.python_dir}")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(build.python_dir),
                           *missing], capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ResourceError(f"could not install {', '.join(missing)} ({tail})",
                            fix=f"pip install {' '.join(missing)}")


def build_llama_cpp(version: str = VERSION, jobs: int = JOBS, force: bool = False,
                    emit: Callable[[str], None] = print, cpuinfo: str | None = None) -> LlamaCppBuild:
    """llama.cpp's library and tools, once per version: a finished build is returned as it is."""
    build = default_build(version)
    if build.complete and not force:
        install_python_dependencies(build, emit)  # a build made before a dependency was needed
        return build
    require_toolchain()
    if force and build.build_dir.exists():
        shutil.rmtree(build.build_dir)
    source = fetch_sdist(build, emit)
    flags = cpu_flags(cpuinfo)
    configure = configure_command(source / "vendor" / "llama.cpp", build.build_dir, flags)
    compile_ = build_command(build.build_dir, jobs)
    started = time.monotonic()
    with open(build.root / "build.log", "a", encoding="utf-8") as log:
        emit("configuring llama.cpp (" + " ".join(a for a in configure if a.startswith("-DGGML_A")
                                                   and a.endswith("=ON")) + ")")
        run_logged(niced(configure), log, emit, "configure")
        emit(f"compiling {', '.join(TARGETS)} with -j{jobs} at nice {NICE} (minutes on 2 cores)")
        run_logged(niced(compile_), log, emit, "build")
    package = build.python_dir / "llama_cpp"
    if package.exists():
        shutil.rmtree(package)
    shutil.copytree(source / "llama_cpp", package, ignore=shutil.ignore_patterns("lib", "*.so", "__pycache__"))
    install_python_dependencies(build, emit)
    record = {"llama_cpp_python": version, "source": str(source), "lib_dir": str(build.lib_dir),
              "python_dir": str(build.python_dir), "configure": configure, "build": compile_,
              "isa_options": isa_options(flags), "cpu_flags": sorted(flags & {f for needs in ISA_OPTIONS.values()
                                                                                for f in needs}),
              "seconds": round(time.monotonic() - started, 1)}
    with temporary_path(build.record) as partial:
        partial.write_text(json.dumps(record, indent=2) + "\n")
    emit(f"built in {record['seconds']:.0f} s: {build.lib_dir}")
    return build


def activate(build: LlamaCppBuild) -> None:
    """Point llama-cpp-python's pure-Python package at this build's library, for this process and its
    children (the bench workers)."""
    os.environ["LLAMA_CPP_LIB_PATH"] = str(build.lib_dir)
    path = str(build.python_dir)
    if path not in sys.path:
        sys.path.insert(0, path)
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if path not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([path, *parts])


def llama_cpp_module():
    """llama_cpp, from this project's build when there is one, else an installed llama-cpp-python."""
    build = find_build()
    if build is not None:
        activate(build)
    try:
        import llama_cpp
    except (ImportError, OSError, RuntimeError) as error:
        raise ResourceError(f"llama.cpp is not available ({str(error).splitlines()[0][:120]})",
                            fix="llama-mobile peer build") from None
    return llama_cpp


def require_tool(name: str) -> Path:
    build = find_build()
    found = build.tool(name) if build is not None else shutil.which(name)
    if not found:
        raise ResourceError(f"{name} is not built", fix="llama-mobile peer build")
    return Path(found)


def isa_label(options: dict[str, bool]) -> str:
    """"AVX AVX2 FMA F16C ..." for the ggml ISA options a build turned on."""
    on = [name.removeprefix("GGML_") for name, enabled in options.items() if enabled]
    return " ".join(on) if on else "baseline x86-64"


def bench_tool() -> tuple[Path, LlamaCppBuild]:
    """This project's llama-bench and its build (version, ISA options: what the bench report names). A
    llama-bench from elsewhere is not used: its version and flags would be unknown."""
    build = find_build()
    if build is None:
        raise ResourceError("llama.cpp's llama-bench is not built", fix="llama-mobile peer build")
    return build.tool("llama-bench"), build
