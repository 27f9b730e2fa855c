"""The native runner (ExecuTorch's C++ runtime without torch) runs a bundle exactly as the Python
bindings do: same logits to float precision, same greedy tokens, with its own llama:: ops."""
import subprocess

import numpy as np
import pytest
import torch

from llama_mobile.jobs.bench_job import BenchRequest, run_bench
from llama_mobile.runtime_harness import native_runner

pytestmark = pytest.mark.skipif(native_runner.compiler() is None, reason="no C++ compiler on this machine")
XNNPACK_FP32 = ("xnnpack", "fp32")  # (backend, dtype)


@pytest.fixture(scope="module")
def runner_binary(tmp_path_factory):
    import os

    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))  # a cold build, not a cached one
    try:
        return native_runner.build()
    finally:
        del os.environ["XDG_CACHE_HOME"]


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


@pytest.mark.parametrize("prompt_len", [5, 56])  # 56: a prefill in two chunks of at most 48
def test_native_logits_match_the_python_runtime(tiny_fp32_bundle, runner_binary, tmp_path, prompt_len):
    program = tiny_fp32_bundle.bundle / "model.pte"
    prompt = [(7 * i + 3) % 300 for i in range(prompt_len)]
    new_tokens = 64 - prompt_len  # up to the end of the 64-token context
    result = native_runner.run(program, prompt, new_tokens, 1, logits=tmp_path / "logits.bin",
                               binary=runner_binary)
    native = np.fromfile(tmp_path / "logits.bin", dtype=np.float32).reshape(new_tokens, -1)
    reference = python_runtime_logits(program, prompt, new_tokens)
    assert native.shape == reference.shape == (new_tokens, 300)
    # Attention over the grouped KV cache (4 heads, 2 KV heads) in our kernel vs ExecuTorch's.
    np.testing.assert_allclose(native, reference, atol=1e-4, rtol=1e-4)
    assert result["tokens"] == [int(row.argmax()) for row in reference]
    assert result["prompt_tokens"] == prompt_len and result["generated_tokens"] == new_tokens
    assert result["decode_tps"] > 0 and result["peak_rss_bytes"] >= result["model_rss_bytes"] > 0


def test_native_process_holds_no_torch(tiny_8da4w_bundle, runner_binary):
    """The quantized kernels and XNNPACK load without torch; the Python worker's process holds ~350 MiB."""
    result = native_runner.run(tiny_8da4w_bundle.bundle / "model.pte", [1, 2, 3], 4, 1, binary=runner_binary)
    assert len(result["tokens"]) == 4
    assert result["peak_rss_bytes"] < 100 * 2**20
    linked = subprocess.run(["ldd", str(runner_binary)], capture_output=True, text=True).stdout
    assert "libexecutorch_backend_xnnpack" in linked
    assert "libtorch" not in linked and "libc10" not in linked


def test_native_runner_errors_name_the_problem(tiny_fp32_bundle, runner_binary, tmp_path):
    from llama_mobile.core.errors import RuntimeFailure

    with pytest.raises(RuntimeFailure, match="exceed the program's context of 64"):
        native_runner.run(tiny_fp32_bundle.bundle / "model.pte", list(range(60)), 8, 1, binary=runner_binary)
    with pytest.raises(RuntimeFailure, match="cannot load"):
        native_runner.run(tmp_path / "missing.pte", [1], 2, 1, binary=runner_binary)


def test_bench_uses_the_native_runner_and_records_it(tiny_fp32_bundle, runner_binary, monkeypatch):
    monkeypatch.setattr(native_runner, "build", lambda: runner_binary)
    report = run_bench(BenchRequest(bundle=tiny_fp32_bundle.bundle, prompt_lengths=(8,), new_tokens=8, runs=2,
                                    warmup=0, threads=1, runtime="native"))
    assert report.runtime == "native"
    figures = report.figures["executorch"]["8"]
    assert figures["prompt_tokens"] == 8 and figures["decode_tps"]["min"] > 0


def test_missing_compiler_is_a_clear_error(monkeypatch):
    from llama_mobile.core.errors import ResourceError

    monkeypatch.setattr(native_runner, "compiler", lambda: None)
    with pytest.raises(ResourceError, match="no C\\+\\+ compiler") as caught:
        native_runner.build()
    assert "--runtime python" in caught.value.fix
    from llama_mobile.jobs.bench_job import resolve_runtime

    assert resolve_runtime("auto", *XNNPACK_FP32) == "python"


def test_bundles_the_native_runner_cannot_run_go_to_the_python_runtime():
    from llama_mobile.core.errors import UsageError
    from llama_mobile.jobs.bench_job import resolve_runtime

    assert resolve_runtime("auto", *XNNPACK_FP32) == "native"
    fp16 = ("xnnpack", "fp16")
    coreml = ("coreml", "fp16")
    assert resolve_runtime("auto", *fp16) == resolve_runtime("auto", *coreml) == "python"
    with pytest.raises(UsageError, match="attention ops are float32, this program is fp16") as caught:
        resolve_runtime("native", *fp16)
    assert caught.value.fix == "use --runtime python"
    with pytest.raises(UsageError, match="no coreml backend"):
        resolve_runtime("native", *coreml)
