"""The llama-mobile command line. Heavy modules load inside commands so --help stays instant."""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from llama_mobile.errors import INTERRUPTED_EXIT_CODE, LlamaMobileError
from llama_mobile.presets import DEFAULT_MODEL, GENERIC_MODEL, MODEL_PRESETS
from llama_mobile.targets import DEFAULT_TARGET, TARGETS

DEFAULT_RECIPE = "8da4w-mixed"


def _quiet_libraries() -> None:
    """torchao logs every optional CUDA extension it cannot load; none matter on a CPU host."""
    logging.getLogger("torchao").setLevel(logging.ERROR)
    for name in ("torch", "torch.utils._pytree", "coremltools", "executorch.backends.apple.coreml"):
        logging.getLogger(name).setLevel(logging.ERROR)
    _route_native_logs()
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache" / "llama-mobile-inductor"))
    os.environ.setdefault("TQDM_DISABLE", "1")  # coremltools' per-pass progress bars; stages report progress
    import warnings

    warnings.filterwarnings("ignore")


_native_logs_routed = False


def _route_native_logs() -> None:
    """ExecuTorch's and the tokenizers' C++ code log to fd 2 at every step. Keep the terminal for
    this tool's own messages: fd 2 goes to a log file, Python's stderr keeps the terminal.
    Set LLAMA_MOBILE_NATIVE_LOGS=1 to see them."""
    global _native_logs_routed
    if os.environ.get("LLAMA_MOBILE_NATIVE_LOGS") == "1" or _native_logs_routed:
        return
    _native_logs_routed = True
    import tempfile

    try:
        terminal = os.dup(2)
        log_path = Path(tempfile.gettempdir()) / f"llama-mobile-native-{os.getuid()}.log"
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError:
        return
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.stderr = os.fdopen(terminal, "w", buffering=1, encoding="utf-8", errors="replace")


def _say(line: str) -> None:
    click.echo(line, err=True)


class Cli(click.Group):
    """Turns the project's errors into one line on stderr and their documented exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LlamaMobileError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: nothing was written (any previous bundle is intact)", err=True)
            sys.exit(INTERRUPTED_EXIT_CODE)


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="llama-mobile")
def main():
    """Take a Llama 3.2 1B/3B, Llama Guard 3 1B or any Llama checkpoint to an ExecuTorch bundle
    an Android or iOS app can ship.

    \b
    Example:
      llama-mobile export                # embedded SmolLM2-135M, 8da4w, XNNPACK
      llama-mobile generate out/smollm2-135m-instruct-8da4w-mixed-xnnpack --prompt "Name three planets."
    """


class _PresetOrFolder(click.Choice):
    """A preset name, or a checkpoint folder (a pruned model): then --model llama --checkpoint FOLDER."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value not in self.choices and Path(value).expanduser().is_dir():
            return value
        return super().convert(value, param, ctx)


@main.command()
@click.option("--model", "model", default=DEFAULT_MODEL, show_default=True,
              type=_PresetOrFolder([*MODEL_PRESETS, GENERIC_MODEL]),
              help="model preset ('llama': shapes from the config), or a checkpoint folder such as a pruned model")
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None,
              help="Meta folder (params.json), Hugging Face folder (config.json) or .gguf; omit for embedded weights")
@click.option("--recipe", default=None, help=f"recipe name or .toml path [default: the device's, else {DEFAULT_RECIPE}]")
@click.option("--target", default=None, type=click.Choice(list(TARGETS)),
              help=f"lowering target [default: the device's, else {DEFAULT_TARGET}]")
@click.option("--device", default=None, help="device preset: picks target, recipe and context (`llama-mobile devices`)")
@click.option("-o", "--output", "output_dir", type=click.Path(path_type=Path), default=Path("out"),
              show_default=True, help="folder the bundle is written into")
@click.option("--context", type=int, default=None, help="context length baked into the program (preset default)")
@click.option("--name", default=None, help="bundle folder name (default MODEL-RECIPE-TARGET)")
@click.option("--no-validate", is_flag=True, help="skip the parity gate against the float model")
@click.option("--task", type=click.Choice(["chat", "guard"]), default=None,
              help="what the model does (default: the preset's; 'guard' for a Llama Guard derivative)")
@click.option("--skip-memory-check", is_flag=True, help="export even if the memory preflight says it will not fit")
@click.option("--format", "formats", multiple=True, type=click.Choice(["mlpackage"]),
              help="also write the Core ML model as a standalone model.mlpackage (Core ML targets)")
@click.option("--single-file", is_flag=True,
              help="keep all weights in model.pte (for iOS's TextLLMRunner, which cannot load model.ptd; "
                   "a tied embedding/output matrix is then stored twice)")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON on stdout")
def export(model, checkpoint, recipe, target, device, output_dir, context, name, no_validate, task,
           skip_memory_check, formats, single_file, as_json):
    """Load, quantize and lower a model, and write a verified bundle.

    \b
    Examples:
      llama-mobile export
      llama-mobile export --model llama3.2-1b --checkpoint ~/Llama3.2-1B-Instruct --recipe 8da4w -o out/
      llama-mobile export --model llama3.2-1b --checkpoint ~/hf/Llama-3.2-1B-Instruct --recipe fp32
      llama-mobile export --model llama3.2-3b --checkpoint CKPT --device snapdragon-7-gen-3
      llama-mobile export --model llama3.2-1b --checkpoint CKPT --target coreml-ios18 --recipe coreml-int4 --format mlpackage
    """
    _quiet_libraries()
    from llama_mobile.pipeline import STAGES, ExportRequest, run_export
    from llama_mobile.progress import Progress

    if model not in MODEL_PRESETS and model != GENERIC_MODEL:  # a folder: its config gives the shapes
        from llama_mobile.errors import UsageError

        if checkpoint is not None:
            raise UsageError("--model is a folder and --checkpoint is given", fix="pass the folder once")
        model, checkpoint = GENERIC_MODEL, Path(model)
    chosen = None
    if device:
        from llama_mobile.devices import get_device

        chosen = get_device(device)
    request = ExportRequest(model=model, checkpoint=checkpoint,
                            recipe=recipe or (target and TARGETS[target].option("recipe"))
                            or (chosen.recipe if chosen else DEFAULT_RECIPE),
                            target=target or (chosen.target if chosen else DEFAULT_TARGET),
                            output_dir=output_dir, context=context or (chosen.context if chosen else None),
                            validate=not no_validate, name=name, task=task, device=device,
                            memory_check=not skip_memory_check, formats=tuple(formats),
                            single_file=single_file)
    result = run_export(request, Progress(STAGES, emit=_say))
    if as_json:
        click.echo(json.dumps({"bundle": str(result.bundle), "size_bytes": result.size_bytes,
                               "seconds": result.seconds, "peak_rss_bytes": result.peak_rss_bytes,
                               "parity": result.parity}, indent=2))
        return
    click.echo(f"bundle: {result.bundle}")
    from runtime_harness.bench import model_bytes

    program = "model.pte + model.ptd" if result.manifest["runtime"].get("weights") else "model.pte"
    click.echo(f"size:   {result.size_bytes / 2**20:.1f} MiB ({program} {model_bytes(result.manifest) / 2**20:.1f} MiB)")
    click.echo(f"time:   {sum(result.seconds.values()):.0f}s, peak RSS {result.peak_rss_bytes / 2**30:.2f} GiB")
    if result.parity:
        from runtime_harness.metrics import ParityMetrics
        from runtime_harness.parity import GateResult

        gate = GateResult(metrics=ParityMetrics(**result.parity["metrics"]), thresholds=result.parity["thresholds"],
                          failures=result.parity["failures"], reference=result.parity["reference"])
        click.echo(gate.summary())


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--prompt", required=True, help="the user message")
@click.option("--max-new-tokens", default=128, show_default=True, type=click.IntRange(1))
@click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(0.0),
              help="0 is greedy")
@click.option("--raw", is_flag=True, help="send the prompt as is, without the bundle's chat template")
@click.option("--json", "as_json", is_flag=True, help="print text and speed as JSON instead of streaming")
def generate(bundle, prompt, max_new_tokens, temperature, raw, as_json):
    """Stream a reply from a bundle through ExecuTorch's TextLLMRunner.

    \b
    Example:
      llama-mobile generate out/smollm2-135m-instruct-8da4w-mixed-xnnpack --prompt "Name three planets."
    """
    _quiet_libraries()
    from llama_mobile.errors import RuntimeFailure
    from llama_mobile.manifest import verify_bundle
    from runtime_harness.generate import Runner
    from llama_mobile.tokenizer import Tokenizer

    manifest = verify_bundle(bundle)
    template = manifest["prompt_template"]
    text = prompt if raw else template["prefix"] + template["user"].replace("{content}", prompt) + template["assistant_start"]
    tokenizer_path = bundle / manifest["tokenizer"]["file"]
    n_prompt = len(Tokenizer(tokenizer_path).encode(text))
    context = manifest["runtime"]["context_length"]
    if n_prompt >= context:
        raise RuntimeFailure(f"the prompt is {n_prompt} tokens but the bundle's context is {context}",
                             path=bundle, fix="shorten the prompt or re-export with a larger --context")
    max_new_tokens = min(max_new_tokens, context - n_prompt)
    runner = Runner(bundle / manifest["runtime"]["program"], tokenizer_path)
    stream = None if as_json else (lambda piece: click.echo(piece, nl=False))
    specials = manifest["special_tokens"]
    end_tokens = tuple(name for name, token_id in specials.get("names", {}).items() if token_id in specials["eos_ids"])
    result = runner.generate(text, max_new_tokens=max_new_tokens, temperature=temperature, on_text=stream,
                             hide=end_tokens)
    s = result.stats
    if as_json:
        click.echo(json.dumps({"text": result.text, "stats": s.__dict__}, indent=2))
        return
    click.echo("")
    sys.stdout.flush()
    _say(f"prompt {s.prompt_tokens} tokens, prefill {s.prefill_tokens_per_s:.1f} tok/s, "
         f"first token {s.time_to_first_token_ms:.0f} ms; decode {s.generated_tokens} tokens "
         f"at {s.decode_tokens_per_s:.1f} tok/s")


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--reference", type=click.Path(path_type=Path), default=None,
              help="the float checkpoint the bundle was made from (omit for embedded weights)")
@click.option("--text", type=click.Path(path_type=Path, exists=True), default=None,
              help="evaluation text (default: the shipped public-domain corpus)")
@click.option("--prompts", type=click.Path(path_type=Path, exists=True), default=None,
              help='JSONL of {"prompt": ...} for the greedy-generation check')
@click.option("--guard-prompts", type=click.Path(path_type=Path, exists=True), default=None,
              help='Guard bundles: JSONL of {"user": ..., "assistant": ...} (default: the shipped set)')
@click.option("--positions", default=256, show_default=True, type=click.IntRange(8))
@click.option("--gate-on", default="fp32", show_default=True, type=click.Choice(["fp32", "bf16"]),
              help="which eager reference the thresholds apply to (both are reported)")
@click.option("--min-top1", type=float, default=None, help="override the recipe's threshold")
@click.option("--min-cosine", type=float, default=None)
@click.option("--max-ppl-ratio", type=float, default=None)
@click.option("--max-kl-mean", type=float, default=None)
@click.option("--json", "as_json", is_flag=True, help="the full report on stdout")
def validate(bundle, reference, text, prompts, guard_prompts, positions, gate_on, min_top1, min_cosine,
             max_ppl_ratio, max_kl_mean, as_json):
    """Gate a bundle on its distance from the float model: exit 0 pass, 10 fail.

    Runs the bundle's program with the ExecuTorch runtime and the reference checkpoint eagerly in
    FP32 and BF16 on the same tokens; reports top-1/top-5 agreement, logits cosine, KL (mean, p99),
    perplexities and their ratio, and greedy-generation match lengths.

    \b
    Examples:
      llama-mobile validate out/smollm2-135m-instruct-8da4w-mixed-xnnpack
      llama-mobile validate out/llama3.2-1b-8da4w-xnnpack --reference ~/Llama3.2-1B-Instruct --json > parity.json
    """
    _quiet_libraries()
    from llama_mobile.errors import ParityFailure
    from llama_mobile.progress import Progress
    from runtime_harness.validate import STAGES, ValidationRequest, run_validation

    overrides = {k: v for k, v in (("min_top1", min_top1), ("min_cosine", min_cosine),
                                   ("max_ppl_ratio", max_ppl_ratio), ("max_kl_mean", max_kl_mean)) if v is not None}
    request = ValidationRequest(bundle=bundle, reference=reference, positions=positions, text=text,
                                prompts=prompts, gate_on=gate_on, thresholds=overrides,
                                guard_prompts=guard_prompts)
    report = run_validation(request, Progress(STAGES, emit=_say))
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print_validation(report)
    if not report["passed"]:
        failures = report["references"][report["gate_on"]]["failures"]
        raise ParityFailure("; ".join(failures), path=bundle, fix="use a milder recipe or relax a threshold")


def _print_validation(report: dict) -> None:
    rows = [("metric", *report["references"])]
    names = ("top1_agreement", "top5_overlap", "cosine_mean", "kl_mean", "kl_p99", "ppl_reference",
             "ppl_candidate", "ppl_ratio")
    for name in names:
        rows.append((name, *(f"{r['metrics'][name]:.4f}" for r in report["references"].values())))
    for row in rows:
        click.echo(f"{row[0]:16s}" + "".join(f"{cell:>14s}" for cell in row[1:]))
    if "guard" in report:
        click.echo(f"guard verdict agreement {report['guard']['verdict_agreement']:.0%}, categories "
                   f"{report['guard']['category_agreement']:.0%} over {report['guard']['conversations']} conversations")
    g = report["generation"]
    click.echo(f"greedy match: mean {g['mean_match']:.1f}/{g['tokens']} tokens over {g['prompts']} prompts "
               f"({g['exact']} identical)")
    gated = report["references"][report["gate_on"]]
    click.echo(f"gate vs {report['gate_on']}: {'PASS' if gated['passed'] else 'FAIL'}"
               + "".join(f"\n  {f}" for f in gated["failures"]))


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def verify(bundle, as_json):
    """Check every file of a bundle against its manifest (SHA-256) and the manifest against its schema.

    \b
    Example:
      llama-mobile verify out/smollm2-135m-instruct-8da4w-mixed-xnnpack
    """
    from llama_mobile.manifest import verify_bundle

    manifest = verify_bundle(bundle)
    if as_json:
        click.echo(json.dumps({"bundle": str(bundle), "ok": True, "files": manifest["files"]}, indent=2))
    else:
        click.echo(f"ok: {len(manifest['files'])} files match manifest.json (schema {manifest['schema_version']})")


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--user", "user_text", default=None, help="the user message to classify")
@click.option("--assistant", "assistant_text", default=None, help="an assistant reply to classify (after --user)")
@click.option("--jsonl", type=click.Path(path_type=Path, exists=True), default=None,
              help='batch: one {"user": ..., "assistant": ...} or {"conversation": [...]} per line')
@click.option("--exclude", default="", help="category codes to leave out, e.g. S6,S8")
@click.option("--json", "as_json", is_flag=True, help="one JSON verdict per line")
def guard(bundle, user_text, assistant_text, jsonl, exclude, as_json):
    """Classify a conversation with a Llama Guard bundle: safe/unsafe, categories, p(unsafe), latency.

    \b
    Examples:
      llama-mobile guard out/llama-guard-3-1b-guard-int4-xnnpack --user "How do I bake bread?"
      llama-mobile guard BUNDLE --jsonl conversations.jsonl --json
    """
    _quiet_libraries()
    from llama_mobile.errors import UsageError
    from llama_mobile.manifest import verify_bundle
    from llama_mobile.tokenizer import Tokenizer
    from runtime_harness.guard import classify
    from runtime_harness.guard_prompt import format_guard_prompt
    from runtime_harness.program import Program

    manifest = verify_bundle(bundle)
    if manifest["model"]["task"] != "guard":
        raise UsageError(f"{bundle} is a {manifest['model']['task']} bundle, not a Llama Guard one",
                         fix="export --model llama-guard-3-1b")
    conversations = []
    if jsonl:
        for number, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                conversations.append(_conversation(json.loads(line), jsonl, number))
    elif user_text:
        conversations.append(_conversation({"user": user_text, "assistant": assistant_text}, None, 0))
    else:
        raise UsageError("nothing to classify", fix="pass --user TEXT or --jsonl FILE")
    excluded = [c.strip() for c in exclude.split(",") if c.strip()]
    tokenizer = Tokenizer(bundle / manifest["tokenizer"]["file"])
    program = Program(bundle / manifest["runtime"]["program"])
    eos = tuple(manifest["special_tokens"]["eos_ids"])
    for conversation in conversations:
        result = classify(program, tokenizer, format_guard_prompt(conversation, excluded=excluded), eos)
        if as_json:
            click.echo(json.dumps(result.to_dict()))
            continue
        if result.safe is None:
            click.echo(f"unparseable  p(unsafe)={result.p_unsafe:.2f}  {result.total_ms:.0f} ms  ({result.error})")
        else:
            names = ", ".join(result.categories)
            click.echo(f"{'safe' if result.safe else 'unsafe':7s} {names:12s} p(unsafe)={result.p_unsafe:.2f}   "
                       f"first token {result.time_to_first_token_ms:.0f} ms, total {result.total_ms:.0f} ms")


def _conversation(item, path, number) -> list[dict]:
    from llama_mobile.errors import ConfigError

    if isinstance(item, dict) and isinstance(item.get("conversation"), list):
        return item["conversation"]
    if isinstance(item, dict) and isinstance(item.get("user"), str):
        turns = [{"role": "user", "content": item["user"]}]
        if isinstance(item.get("assistant"), str):
            turns.append({"role": "assistant", "content": item["assistant"]})
        return turns
    raise ConfigError(f"line {number} has neither 'user' nor 'conversation'", path=path,
                      fix='write {"user": "...", "assistant": "..."} per line')


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--prompt-lengths", default="32,128", show_default=True, help="comma-separated prompt token counts")
@click.option("--new-tokens", default=64, show_default=True, type=click.IntRange(2))
@click.option("--runs", default=3, show_default=True, type=click.IntRange(1))
@click.option("--warmup", default=1, show_default=True, type=click.IntRange(0))
@click.option("--threads", default=2, show_default=True, type=click.IntRange(1))
@click.option("--vs-llama-cpp", "vs_llama_cpp", is_flag=True,
              help="also run llama.cpp on the same weights requantized by llama.cpp (Q4_0 next to 8da4w); "
                   "a Meta or Hugging Face Llama 3 source is first written as an F16 GGUF")
@click.option("--gguf", type=click.Path(path_type=Path, exists=True), default=None,
              help="the llama.cpp file to compare with (implies --vs-llama-cpp)")
@click.option("--plot", type=click.Path(path_type=Path, dir_okay=False), default=None,
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
    _quiet_libraries()
    import tempfile

    from llama_mobile.manifest import verify_bundle
    from llama_mobile.progress import Progress
    from runtime_harness.bench import STAGES, BenchRequest, run_bench

    try:
        lengths = tuple(int(x) for x in prompt_lengths.split(","))
    except ValueError:
        raise click.BadParameter("give integers such as 32,128", param_hint="--prompt-lengths") from None
    if vs_llama_cpp and gguf is None:
        from runtime_harness.gguf_peer import peer_for_bundle

        gguf = peer_for_bundle(verify_bundle(bundle), Path(tempfile.mkdtemp(prefix="llama-mobile-peer-")))
    request = BenchRequest(bundle=bundle, prompt_lengths=lengths, new_tokens=new_tokens, runs=runs,
                           warmup=warmup, threads=threads, llama_cpp_gguf=gguf, quality=quality, runtime=runtime)
    report = run_bench(request, Progress(STAGES, emit=_say))
    if plot is not None:
        from runtime_harness.bench_plot import plot_report

        report["plot"] = str(plot_report(report, plot))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    sides = [s for s in ("executorch", "llama.cpp") if s in report]
    click.echo(f"our side ran in the {report['runtime']} runtime")
    click.echo(f"{'prompt':>6s} {'figure':>14s}" + "".join(f"{s:>22s}" for s in sides)
               + ("        ratio" if "ratios" in report else ""))
    for length in report["executorch"]:
        for figure in ("ttft_ms", "prefill_tps", "decode_tps", "peak_rss_bytes", "model_rss_bytes"):
            cells = []
            for side in sides:
                f = report[side][length][figure]
                scale = 2**20 if figure.endswith("rss_bytes") else 1
                cells.append(f"{f['median'] / scale:9.1f} [{f['min'] / scale:.0f}-{f['max'] / scale:.0f}]")
            ratio = report.get("ratios", {}).get(length, {}).get(figure)
            label = {"peak_rss_bytes": "peak RSS MiB", "model_rss_bytes": "model RSS MiB"}.get(figure, figure)
            click.echo(f"{length:>6s} {label:>14s}"
                       + "".join(f"{c:>22s}" for c in cells) + (f"   {ratio:8.2f}x" if ratio else ""))
    sizes = "  ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in report["size_bytes"].items())
    click.echo(f"size: {sizes}")
    if "quality" in report:
        q = report["quality"]
        click.echo(f"quality vs {q['reference']} over {q['positions']} tokens (top-1 / KL / ppl ratio):")
        for side in ("executorch", "llama.cpp"):
            m = q[side]
            click.echo(f"  {side:>10s}  {m['top1_agreement']:.3f} / {m['kl_mean']:.3f} / {m['ppl_ratio']:.3f}")
    if "plot" in report:
        click.echo(f"plot: {report['plot']}")


@main.command()
@click.option("--json", "as_json", is_flag=True)
def models(as_json):
    """List the model presets and their architectures.

    \b
    Example:
      llama-mobile models --json
    """
    rows = {name: {"summary": p.summary, "task": p.task, "embedded": p.embedded,
                   "default_context": p.default_context, "architecture": p.architecture.to_dict()}
            for name, p in MODEL_PRESETS.items()}
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for name, p in MODEL_PRESETS.items():
        a = p.architecture
        click.echo(f"{name:24s} {a.n_layers:2d} blocks, dim {a.dim}, heads {a.n_heads}/{a.n_kv_heads}, "
                   f"ffn {a.ffn_hidden}, vocab {a.vocab_size}  {p.summary}")
    click.echo(f"{GENERIC_MODEL:24s} any Llama-architecture checkpoint; shapes from its own config")


@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def recipes(ctx, as_json):
    """List the shipped quantization recipes; `recipes show NAME` prints one.

    \b
    Examples:
      llama-mobile recipes
      llama-mobile recipes show 8da4w
    """
    if ctx.invoked_subcommand:
        return
    from quantize.recipe import load_recipe, shipped_recipes

    loaded = {name: load_recipe(name) for name in shipped_recipes()}
    if as_json:
        click.echo(json.dumps({n: r.to_dict() for n, r in loaded.items()}, indent=2))
        return
    for name, recipe in loaded.items():
        click.echo(f"{name:22s} {recipe.summary}")


@recipes.command("show")
@click.argument("name")
def recipes_show(name):
    """Print a recipe's TOML.

    \b
    Example:
      llama-mobile recipes show 8da4w
    """
    from quantize.recipe import load_recipe, shipped_recipes

    load_recipe(name)  # validates; raises a one-line error for an unknown name
    path = shipped_recipes().get(name) or Path(name)
    click.echo(path.read_text(), nl=False)


@main.command()
@click.option("--json", "as_json", is_flag=True)
def devices(as_json):
    """List the device presets: cores, ISA features, RAM, bandwidth, NPU, and the defaults they pick.

    \b
    Example:
      llama-mobile devices
      llama-mobile export --device snapdragon-8-gen-3 --model llama3.2-1b --checkpoint CKPT
    """
    from llama_mobile.devices import DEVICES

    if as_json:
        click.echo(json.dumps({n: d.to_dict() for n, d in DEVICES.items()}, indent=2))
        return
    for name, d in DEVICES.items():
        npu = d.npu.name if d.npu else "-"
        click.echo(f"{name:20s} {'+'.join(str(c.count) for c in (d.big, d.mid, d.little))} cores, "
                   f"{','.join(d.isa) or '-':18s} {d.ram_gb:2d} GB {d.bandwidth_gbs:5.1f} GB/s  NPU {npu:22s} "
                   f"-> {d.target}/{d.recipe}, {d.threads} threads, context {d.context}")


@main.command()
@click.option("--model", default=DEFAULT_MODEL, show_default=True, type=click.Choice(list(MODEL_PRESETS)))
@click.option("--recipe", default=None, help="recipe name or .toml (default: the device's, else 8da4w)")
@click.option("--device", default=None, help="device preset (see `llama-mobile devices`)")
@click.option("--context", type=int, default=None, help="context length (default: the device's or the model's)")
@click.option("--json", "as_json", is_flag=True)
def plan(model, recipe, device, context, as_json):
    """Predict .pte size, runtime memory and (with --device) fit and a decode-speed ceiling, from the
    architecture alone: no weights needed.

    \b
    Examples:
      llama-mobile plan --model llama3.2-1b --recipe llama3.2-quantized
      llama-mobile plan --model llama3.2-3b --device snapdragon-7-gen-3
    """
    from llama_mobile.devices import get_device
    from llama_mobile.plan import plan as make_plan
    from llama_mobile.presets import get_model_preset
    from quantize.recipe import load_recipe

    preset = get_model_preset(model)
    chosen = get_device(device) if device else None
    recipe_obj = load_recipe(recipe or (chosen.recipe if chosen else DEFAULT_RECIPE))
    if context is None and chosen is None:
        context = preset.default_context
    result = make_plan(preset.architecture, recipe_obj, context=context, device=chosen)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    click.echo(f"{model} / {recipe_obj.name} / context {result.context}")
    for component in result.size.components:
        click.echo(f"  {component.name:28s} {component.bytes / 2**20:10.1f} MiB  {component.detail}")
    click.echo(f"  {'predicted program':28s} {result.size.total / 2**20:10.1f} MiB")
    m = result.memory
    click.echo(f"runtime memory: {m.total / 2**20:.0f} MiB (weights {m.weights / 2**20:.0f}, KV cache "
               f"{m.kv_cache / 2**20:.0f}, activations ~{m.activations / 2**20:.0f})")
    if result.device:
        f = result.device
        click.echo(f"{f.device}: {'fits' if f.fits else 'does NOT fit'} in {f.budget_bytes / 2**30:.1f} GiB "
                   f"(40% of {f.ram_bytes / 2**30:.0f} GiB); decode ceiling {f.decode_tokens_per_s_ceiling:.1f} "
                   f"tok/s (a bandwidth ceiling, not a forecast); {f.threads} threads")
    for note in result.notes:
        click.echo(f"note: {note}")


@main.command()
@click.option("--json", "as_json", is_flag=True)
def targets(as_json):
    """List lowering targets.

    \b
    Example:
      llama-mobile targets
    """
    from export.backends import sdk_problem

    problems = {name: sdk_problem(target) for name, target in TARGETS.items()}
    if as_json:
        click.echo(json.dumps({n: {**t.__dict__, "sdk_available": problems[n] is None, "sdk_problem": problems[n]}
                               for n, t in TARGETS.items()}, indent=2))
        return
    for name, target in TARGETS.items():
        flags = "".join(f" [{flag}]" for flag in ("experimental" if target.experimental else "",
                                                  "SDK missing" if problems[name] else "") if flag)
        click.echo(f"{name:22s} {target.summary}{flags}")


from llama_mobile.cli_prune import prune  # noqa: E402

main.add_command(prune)

if __name__ == "__main__":
    main()
