"""The native runner (ExecuTorch's C++ runtime without torch) runs a bundle exactly as the Python
bindings do: same logits to float precision, same greedy tokens, with ExecuTorch's own llama:: op
kernels built from its sources (the default) or with llm_ops.cpp (the labelled experiment)."""
import subprocess

import numpy as np
import pytest
import torch

from llama_mobile.jobs.bench_job import BenchRequest, run_bench
from llama_mobile.runtime_harness import native_runner

pytestmark = pytest.mark.skipif(native_runner.compiler() is None, reason="no C++ compiler on this machine")
XNNPACK_FP32 = ("xnnpack", "fp32")  # (backend, dtype)


@pytest.fixture(scope="module")
def runner_binaries(tmp_path_factory):
    """kernels -> binary, each a cold build, not a cached one."""
    import os

    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    try:
        return {kernels: native_runner.build(kernels) for kernels in native_runner.KERNELS}
    finally:
        del os.environ["XDG_CACHE_HOME"]


@pytest.fixture(scope="module")
def runner_binary(runner_binaries):
    return runner_binaries[native_runner.DEFAULT_KERNELS]


def python_runtime_logits(program, prompt: list[int], new_tokens: int, max_seq_len: int = 48) -> np.ndarray:
    """The last position's logits after the prompt and after each greedy step, from the Python bindings."""
    from llama_mobile.runtime_harness.program import Program

    loaded = Program(program)
    for begin in range(0, len(prompt), max_seq_len):
        logits = loaded.forward(torch.tensor([prompt[begin:begin + max_seq_len]]), begin)
    rows = [logits.reshape(-1, logits.shape[-1])[-1].float().numpy()]
    for pos in range(len(prompt), len(prompt) + new_tokens - 1):
        logits = loaded.forward(torch.tensor([[int(rows[-1].argmax())]]), pos)
        rows.append(logits.reshape(-1, logits.shape[-1])[-1].float().numpy())
    return np.stack(rows)


@pytest.mark.parametrize("kernels", ["executorch", "own"])
@pytest.mark.parametrize("prompt_len", [5, 56])  # 56: a prefill in two chunks of at most 48
def test_native_logits_match_the_python_runtime(tiny_fp32_bundle, runner_binaries, tmp_path, prompt_len, kernels):
    program = tiny_fp32_bundle.bundle / "model.pte"
    prompt = [(7 * i + 3) % 300 for i in range(prompt_len)]
    new_tokens = 64 - prompt_len  # up to the end of the 64-token context
    # after a warm-up generation in the same process, whose cache entries the timed run must not read
    result = native_runner.run(program, prompt, new_tokens, 1, logits=tmp_path / "logits.bin",
                               binary=runner_binaries[kernels], warmup=1)
    native = np.fromfile(tmp_path / "logits.bin", dtype=np.float32).reshape(new_tokens, -1)
    reference = python_runtime_logits(program, prompt, new_tokens)
    assert native.shape == reference.shape == (new_tokens, 300)
    # Attention over the grouped KV cache (4 heads, 2 KV heads): these kernels vs the wheel's.
    np.testing.assert_allclose(native, reference, atol=1e-4, rtol=1e-4)
    assert result["warmup"] == 1
    assert result["tokens"] == [int(row.argmax()) for row in reference]
    assert result["prompt_tokens"] == prompt_len and result["generated_tokens"] == new_tokens
    assert result["decode_tps"] > 0 and result["peak_rss_bytes"] >= result["model_rss_bytes"] > 0


def test_native_process_holds_no_torch(tiny_8da4w_bundle, runner_binary):
    """The quantized kernels, XNNPACK and ExecuTorch's LLM op kernels load without torch; the Python
    worker's process holds ~350 MiB."""
    result = native_runner.run(tiny_8da4w_bundle.bundle / "model.pte", [1, 2, 3], 4, 1, binary=runner_binary)
    assert len(result["tokens"]) == 4
    assert result["peak_rss_bytes"] < 100 * 2**20
    linked = subprocess.run(["ldd", str(runner_binary)], capture_output=True, text=True).stdout
    assert "libexecutorch_backend_xnnpack" in linked
    assert "libtorch" not in linked and "libc10" not in linked


def defined_functions(binary) -> str:
    return subprocess.run(["nm", "-C", "--defined-only", str(binary)], capture_output=True, text=True).stdout


def test_the_default_runner_holds_executorchs_own_kernels(runner_binaries):
    """The headline runner's llama::custom_sdpa / update_cache are ExecuTorch's (torch::executor::native, as
    in the wheel's libcustom_ops_aot_lib.so), not llm_ops.cpp's; the experiment is the other way round."""
    assert native_runner.DEFAULT_KERNELS == "executorch"
    default = defined_functions(runner_binaries["executorch"])
    assert "torch::executor::native::custom_sdpa_out(" in default
    assert "torch::executor::native::update_cache_out(" in default
    assert "llm_ops::" not in default
    own = defined_functions(runner_binaries["own"])
    assert "llm_ops::custom_sdpa_out(" in own and "torch::executor::native::custom_sdpa_out(" not in own
    assert "ExecuTorch's own" in native_runner.KERNELS["executorch"].label
    assert "experiment" in native_runner.KERNELS["own"].label


def test_native_runner_errors_name_the_problem(tiny_fp32_bundle, runner_binary, tmp_path):
    from llama_mobile.core.errors import RuntimeFailure

    with pytest.raises(RuntimeFailure, match="exceed the program's context of 64"):
        native_runner.run(tiny_fp32_bundle.bundle / "model.pte", list(range(60)), 8, 1, binary=runner_binary)
    with pytest.raises(RuntimeFailure, match="cannot load"):
        native_runner.run(tmp_path / "missing.pte", [1], 2, 1, binary=runner_binary)


@pytest.mark.parametrize("runtime,kernels", [("native", "executorch"), ("native-own-kernels", "own")])
def test_bench_uses_the_native_runner_and_records_it(tiny_fp32_bundle, runner_binaries, monkeypatch, runtime,
                                                     kernels):
    built = []
    monkeypatch.setattr(native_runner, "build", lambda k="executorch": built.append(k) or runner_binaries[k])
    report = run_bench(BenchRequest(bundle=tiny_fp32_bundle.bundle, prompt_lengths=(8,), new_tokens=8, runs=2,
                                    warmup=0, threads=1, runtime=runtime))
    assert report.runtime == runtime and set(built) == {kernels}
    figures = report.figures["executorch"]["8"]
    assert figures["prompt_tokens"] == 8 and figures["decode_tps"]["min"] > 0
    assert report.setup["executorch"]["kernels"] == native_runner.KERNELS[kernels].label
    assert ("experiment" in report.setup["executorch"]["runtime"]) == (runtime == "native-own-kernels")


def test_missing_compiler_is_a_clear_error(monkeypatch):
    from llama_mobile.core.errors import ResourceError

    monkeypatch.setattr(native_runner, "compiler", lambda: None)
    with pytest.raises(ResourceError, match="no C\\+\\+ compiler") as caught:
        native_runner.build()
    assert "--runtime python" in caught.value.fix
    from llama_mobile.jobs.bench_job import resolve_runtime

    assert resolve_runtime("auto", *XNNPACK_FP32) == "python"


def test_the_default_runtime_is_the_native_runner_with_executorchs_kernels():
    from llama_mobile.core.errors import UsageError
    from llama_mobile.jobs.bench_job import NATIVE_KERNELS, BenchRequest, resolve_runtime

    assert BenchRequest(bundle=None).runtime == "auto"
    assert resolve_runtime("auto", *XNNPACK_FP32) == "native" and NATIVE_KERNELS["native"] == "executorch"
    assert resolve_runtime("native-own-kernels", *XNNPACK_FP32) == "native-own-kernels"
    assert NATIVE_KERNELS["native-own-kernels"] == "own"
    assert resolve_runtime("python", *XNNPACK_FP32) == "python"
    with pytest.raises(ValueError):
        resolve_runtime("own", *XNNPACK_FP32)
    fp16 = ("xnnpack", "fp16")
    coreml = ("coreml", "fp16")
    assert resolve_runtime("auto", *fp16) == resolve_runtime("auto", *coreml) == "python"
    for runtime in NATIVE_KERNELS:
        with pytest.raises(UsageError, match="runs float32 programs, this program is fp16") as caught:
            resolve_runtime(runtime, *fp16)
        assert caught.value.fix == "use --runtime python"
        with pytest.raises(UsageError, match="no coreml backend"):
            resolve_runtime(runtime, *coreml)


def test_a_host_that_cannot_build_executorchs_kernels_falls_back_to_textllmrunner(monkeypatch):
    from llama_mobile.core.errors import ResourceError, UsageError
    from llama_mobile.jobs.bench_job import resolve_runtime

    monkeypatch.setattr(native_runner.platform, "machine", lambda: "aarch64")
    assert resolve_runtime("auto", *XNNPACK_FP32) == "python"
    with pytest.raises(UsageError, match="x86-64"):
        resolve_runtime("native", *XNNPACK_FP32)
    assert resolve_runtime("native-own-kernels", *XNNPACK_FP32) == "native-own-kernels"
    with pytest.raises(ResourceError, match="x86-64"):
        native_runner.build("executorch")
