import pytest

from llama_mobile.jobs.bench_job import BenchRequest, ratios, run_bench, summarise


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
    figures = report.figures["executorch"]["8"]
    assert figures["decode_tps"]["median"] > 0 and figures["peak_rss_bytes"]["median"] > 0
    assert report.size_bytes["executorch"] == tiny_fp32_bundle.manifest.to_dict()["files"]["model.pte"]["size"]
    assert "llama.cpp" not in report.figures and "llama.cpp" not in report.to_dict()


def test_plot_writes_a_png_with_one_panel_per_figure(tmp_path):
    from llama_mobile.runtime_harness.bench_plot import plot_report

    from llama_mobile.core.reports import BenchReport

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
        return {**sample(10, 100, 50, 400), "prompt_tokens": len(prompt.token_ids)}

    monkeypatch.setattr(bench, "measure", fake_measure)
    gguf = tmp_path / "peer.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    report = run_bench(BenchRequest(bundle=tiny_fp32_bundle.bundle, prompt_lengths=(4, 8), new_tokens=4, runs=3,
                                    warmup=1, threads=1, llama_cpp_gguf=gguf, runtime="python"))
    per_length = [("executorch", 4), ("llama.cpp", 4)] * 4 + [("executorch", 8), ("llama.cpp", 8)] * 4
    assert calls == per_length  # one warm-up pair, then three run pairs, per prompt length
    assert report.ratios["8"]["decode_tps"] == pytest.approx(1.0) and report.size_bytes["llama.cpp"] == 64
