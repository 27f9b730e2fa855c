"""`llama-mobile bench`: speed, memory and size, optionally beside llama.cpp."""
from __future__ import annotations

import json
from pathlib import Path

import click

from llama_mobile.cli.common import FilePath, IntList, quiet_libraries, say
from llama_mobile.core.reports import OURS


@click.command()
@click.argument("bundle", type=FilePath(path_type=Path))
@click.option("--prompt-lengths", default="32,128", show_default=True, type=IntList(1),
              help="comma-separated prompt token counts")
@click.option("--new-tokens", default=64, show_default=True, type=click.IntRange(2))
@click.option("--runs", default=3, show_default=True, type=click.IntRange(1))
@click.option("--warmup", default=1, show_default=True, type=click.IntRange(0))
@click.option("--threads", default=2, show_default=True, type=click.IntRange(1))
@click.option("--vs-llama-cpp", "vs_llama_cpp", is_flag=True,
              help="also time llama.cpp's own llama-bench (`llama-mobile peer build`) on the same weights "
                   "requantized by llama.cpp (Q4_0 next to 8da4w); a Meta or Hugging Face Llama 3 source is first "
                   "written as an F16 GGUF")
@click.option("--gguf", type=FilePath(path_type=Path, exists=True, dir_okay=False), default=None,
              help="the llama.cpp file to compare with (implies --vs-llama-cpp)")
@click.option("--plot", type=FilePath(path_type=Path, dir_okay=False), default=None,
              help="also write a PNG chart of the speeds (needs the bench extra: matplotlib)")
@click.option("--quality", is_flag=True,
              help="also top-1 / KL / perplexity ratio of ours (and of every llama.cpp file: --vs-llama-cpp, "
                   "--gguf, --peer-types) against the FP32 source on the same tokens")
@click.option("--peer-types", "peer_types", default=None, metavar="TYPES",
              help="with --quality: llama.cpp types made by llama-quantize from the bundle's source, e.g. "
                   "Q4_0,IQ4_XS,Q4_K_M+imatrix ('+imatrix': with an importance matrix from llama-imatrix on the "
                   "export's calibration text); needs `llama-mobile peer build`")
@click.option("--imatrix", is_flag=True, help="every --peer-types type with the importance matrix")
@click.option("--text", "texts", multiple=True, type=FilePath(path_type=Path, exists=True, dir_okay=False),
              help="a further (held-out) text to score quality on, besides the parity text; repeatable")
@click.option("--positions", default=256, show_default=True, type=click.IntRange(8),
              help="token positions scored per text (per window with --whole-text)")
@click.option("--whole-text", is_flag=True,
              help="with --quality: score every window of --positions tokens through each text, pooled, not "
                   "just the first (a steadier perplexity ratio)")
@click.option("--quality-only", is_flag=True, help="the quality table alone: no speed runs")
@click.option("--peer-dir", type=FilePath(path_type=Path, file_okay=False), default=None,
              help="keep the --peer-types GGUFs here (default: a temporary folder)")
@click.option("--runtime", type=click.Choice(["auto", "native", "python", "native-own-kernels"]), default="auto",
              show_default=True,
              help="our side: 'native' builds a C++ runner on ExecuTorch's runtime and its own kernels, no torch "
                   "(what an app runs; needs g++), 'python' uses TextLLMRunner through the Python bindings (same "
                   "kernels, torch in the process), 'auto' is native when a compiler is found; "
                   "'native-own-kernels' is an experiment: the native runner with llama-mobile's own LLM op "
                   "kernels, which no app runs")
@click.option("--json", "as_json", is_flag=True)
def bench(bundle, prompt_lengths, new_tokens, runs, warmup, threads, vs_llama_cpp, gguf, plot, quality, peer_types,
          imatrix, texts, positions, whole_text, quality_only, peer_dir, runtime, as_json):
    """Prefill and decode tokens/s, time to first token, peak RSS and size, each run in a fresh process.

    \b
    Examples:
      llama-mobile bench out/smollm2-135m-instruct-8da4w-mixed-xnnpack
      llama-mobile bench out/smollm2-135m-instruct-8da4w-mixed-xnnpack --vs-llama-cpp --json
      llama-mobile bench out/smollm2-135m-instruct-8da4w-mixed-xnnpack --vs-llama-cpp --quality --plot bench.png
      llama-mobile bench out/smollm2-135m-instruct-8da4w-mixed-xnnpack --runtime python
      llama-mobile peer build     # once: llama.cpp's llama-bench, quantizer, imatrix and library
      llama-mobile bench BUNDLE --quality-only --peer-types Q4_0,IQ4_XS+imatrix,Q4_K_M --text heldout.txt
      llama-mobile bench BUNDLE --quality-only --peer-types IQ4_XS+imatrix --positions 512 --whole-text
    Run it on an idle machine: llama.cpp's threads collapse when another process shares a core.
    """
    quiet_libraries()
    import tempfile

    from llama_mobile.core.bundle import verify_bundle
    from llama_mobile.core.errors import UsageError
    from llama_mobile.core.progress import Progress
    from llama_mobile.jobs.bench_job import STAGES, BenchRequest, run_bench
    from llama_mobile.runtime_harness.gguf_peer import parse_peer_types

    lengths = tuple(prompt_lengths)
    if imatrix and not peer_types:
        raise UsageError("--imatrix applies to --peer-types", fix="add --peer-types Q4_K_M,IQ4_XS")
    peers = tuple(parse_peer_types(peer_types, imatrix)) if peer_types is not None else ()
    quality = quality or quality_only or bool(peers)
    if whole_text and not quality:
        raise UsageError("--whole-text applies to the quality table", fix="add --quality or --quality-only")
    if quality_only and (vs_llama_cpp or plot is not None):
        raise UsageError("--quality-only measures no speed", fix="drop --vs-llama-cpp/--plot, or --quality-only")
    if quality_only and gguf is not None:
        vs_llama_cpp = False  # the given file joins the quality table only
    if (vs_llama_cpp or gguf is not None) and not quality_only:
        from llama_mobile.runtime_harness.llama_cpp_build import bench_tool

        bench_tool()  # the peer is timed by llama-bench: say so before converting any weights
    if vs_llama_cpp and gguf is None:
        from llama_mobile.runtime_harness.gguf_peer import peer_for_bundle

        gguf = peer_for_bundle(verify_bundle(bundle).manifest, Path(tempfile.mkdtemp(prefix="llama-mobile-peer-")))
    request = BenchRequest(bundle=bundle, prompt_lengths=lengths, new_tokens=new_tokens, runs=runs,
                           warmup=warmup, threads=threads, llama_cpp_gguf=gguf, quality=quality, runtime=runtime,
                           peer_types=peers, texts=tuple(texts), positions=positions, whole_text=whole_text,
                           quality_only=quality_only,
                           peer_dir=peer_dir)
    report = run_bench(request, Progress(STAGES, emit=say))
    if plot is not None:
        from llama_mobile.runtime_harness.bench_plot import plot_report

        report.plot = str(plot_report(report, plot))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    if report.measured:
        print_speeds(report)
    sizes = "  ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in report.size_bytes.items())
    click.echo(f"size: {sizes}")
    if report.quality:
        from llama_mobile.runtime_harness.peer_quality import format_table

        q = report.quality
        click.echo(f"quality vs {q.reference} (top-1 / KL mean / ppl ratio; "
                   + ", ".join(f"{name}: {path}" for name, path in q.texts.items()) + "):")
        for line in format_table(q):
            click.echo("  " + line)
    if report.plot:
        click.echo(f"plot: {report.plot}")


def side_lines(report) -> list[str]:
    """Which runtime and kernels produced each side's figures, and how they were timed and measured."""
    lines = []
    for side in report.sides:
        setup = report.setup.get(side, {})
        lines.append(f"{side}: {setup.get('runtime', report.runtime)}")
        for key in ("kernels", "timing", "memory"):
            if setup.get(key):
                lines.append(f"  {key}: {setup[key]}")
    return lines


def print_speeds(report) -> None:
    from llama_mobile.jobs.bench_job import FIGURES

    for line in side_lines(report):
        click.echo(line)
    click.echo(f"{'prompt':>6s} {'figure':>14s}" + "".join(f"{s:>22s}" for s in report.sides)
               + ("        ratio" if report.ratios else ""))
    for length in report.figures[OURS]:
        for figure in FIGURES:
            cells = []
            for side in report.sides:
                f = report.figures[side].get(length, {}).get(figure)
                scale = 2**20 if figure.endswith("rss_bytes") else 1
                cells.append(f"{f['median'] / scale:9.1f} [{f['min'] / scale:.0f}-{f['max'] / scale:.0f}]"
                             if f else "-")
            ratio = (report.ratios or {}).get(length, {}).get(figure)
            label = {"peak_rss_bytes": "peak RSS MiB", "model_rss_bytes": "model RSS MiB"}.get(figure, figure)
            click.echo(f"{length:>6s} {label:>14s}"
                       + "".join(f"{c:>22s}" for c in cells) + (f"   {ratio:8.2f}x" if ratio else ""))
