"""`llama-mobile bench`: speed, memory and size, optionally beside llama.cpp."""
from __future__ import annotations

import json
from pathlib import Path

import click

from llama_mobile.core.reports import OURS, PEER
from llama_mobile.cli.common import FilePath, IntList, quiet_libraries, say


@click.command()
@click.argument("bundle", type=FilePath(path_type=Path))
@click.option("--prompt-lengths", default="32,128", show_default=True, type=IntList(1),
              help="comma-separated prompt token counts")
@click.option("--new-tokens", default=64, show_default=True, type=click.IntRange(2))
@click.option("--runs", default=3, show_default=True, type=click.IntRange(1))
@click.option("--warmup", default=1, show_default=True, type=click.IntRange(0))
@click.option("--threads", default=2, show_default=True, type=click.IntRange(1))
@click.option("--vs-llama-cpp", "vs_llama_cpp", is_flag=True,
              help="also run llama.cpp on the same weights requantized by llama.cpp (Q4_0 next to 8da4w); "
                   "a Meta or Hugging Face Llama 3 source is first written as an F16 GGUF")
@click.option("--gguf", type=FilePath(path_type=Path, exists=True, dir_okay=False), default=None,
              help="the llama.cpp file to compare with (implies --vs-llama-cpp)")
@click.option("--plot", type=FilePath(path_type=Path, dir_okay=False), default=None,
              help="also write a PNG chart of the speeds (needs the bench extra: matplotlib)")
@click.option("--quality", is_flag=True,
              help="with --vs-llama-cpp: also top-1 / KL / perplexity ratio of both against the FP32 source")
@click.option("--runtime", type=click.Choice(["auto", "native", "python"]), default="auto", show_default=True,
              help="our side: 'native' builds a C++ runner on ExecuTorch's runtime alone (what an app links; "
                   "needs g++), 'python' uses TextLLMRunner through the Python bindings (the process holds "
                   "torch); 'auto' is native when a compiler is found")
@click.option("--json", "as_json", is_flag=True)
def bench(bundle, prompt_lengths, new_tokens, runs, warmup, threads, vs_llama_cpp, gguf, plot, quality, runtime,
          as_json):
    """Prefill and decode tokens/s, time to first token, peak RSS and size, each run in a fresh process.

    \b
    Examples:
      llama-mobile bench out/smollm2-135m-instruct-8da4w-mixed-xnnpack
      llama-mobile bench out/smollm2-135m-instruct-8da4w-mixed-xnnpack --vs-llama-cpp --json
      llama-mobile bench out/smollm2-135m-instruct-8da4w-mixed-xnnpack --vs-llama-cpp --quality --plot bench.png
      llama-mobile bench out/smollm2-135m-instruct-8da4w-mixed-xnnpack --runtime python
    Run it on an idle machine: llama.cpp's threads collapse when another process shares a core.
    """
    quiet_libraries()
    import tempfile

    from llama_mobile.core.bundle import verify_bundle
    from llama_mobile.core.progress import Progress
    from llama_mobile.jobs.bench_job import FIGURES, STAGES, BenchRequest, run_bench

    lengths = tuple(prompt_lengths)
    if vs_llama_cpp and gguf is None:
        from llama_mobile.runtime_harness.gguf_peer import peer_for_bundle

        gguf = peer_for_bundle(verify_bundle(bundle).manifest, Path(tempfile.mkdtemp(prefix="llama-mobile-peer-")))
    request = BenchRequest(bundle=bundle, prompt_lengths=lengths, new_tokens=new_tokens, runs=runs,
                           warmup=warmup, threads=threads, llama_cpp_gguf=gguf, quality=quality, runtime=runtime)
    report = run_bench(request, Progress(STAGES, emit=say))
    if plot is not None:
        from llama_mobile.runtime_harness.bench_plot import plot_report

        report.plot = str(plot_report(report, plot))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    click.echo(f"our side ran in the {report.runtime} runtime")
    click.echo(f"{'prompt':>6s} {'figure':>14s}" + "".join(f"{s:>22s}" for s in report.sides)
               + ("        ratio" if report.ratios else ""))
    for length in report.figures[OURS]:
        for figure in FIGURES:
            cells = []
            for side in report.sides:
                f = report.figures[side][length][figure]
                scale = 2**20 if figure.endswith("rss_bytes") else 1
                cells.append(f"{f['median'] / scale:9.1f} [{f['min'] / scale:.0f}-{f['max'] / scale:.0f}]")
            ratio = (report.ratios or {}).get(length, {}).get(figure)
            label = {"peak_rss_bytes": "peak RSS MiB", "model_rss_bytes": "model RSS MiB"}.get(figure, figure)
            click.echo(f"{length:>6s} {label:>14s}"
                       + "".join(f"{c:>22s}" for c in cells) + (f"   {ratio:8.2f}x" if ratio else ""))
    sizes = "  ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in report.size_bytes.items())
    click.echo(f"size: {sizes}")
    if report.quality:
        q = report.quality
        click.echo(f"quality vs {q['reference']} over {q['positions']} tokens (top-1 / KL / ppl ratio):")
        for side in (OURS, PEER):
            m = q[side]
            click.echo(f"  {side:>10s}  {m['top1_agreement']:.3f} / {m['kl_mean']:.3f} / {m['ppl_ratio']:.3f}")
    if report.plot:
        click.echo(f"plot: {report.plot}")
