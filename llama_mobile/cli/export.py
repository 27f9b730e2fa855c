"""`llama-mobile export`: load, quantize, lower and bundle a model."""
from __future__ import annotations

import json
from pathlib import Path

import click

from llama_mobile.cli.common import FilePath, PlainName, PresetOrFolder, Text, quiet_libraries, say
from llama_mobile.core.manifest import AttentionSink
from llama_mobile.core.presets import DEFAULT_MODEL, GENERIC_MODEL, MODEL_PRESETS
from llama_mobile.core.targets import DEFAULT_TARGET, TARGETS
from llama_mobile.quantize.recipe import DEFAULT_RECIPE, KV_CACHES


class SinkWindow(click.ParamType):
    """SINK,WINDOW: two integers, SINK >= 1, WINDOW >= 16 (the cache is SINK + 2 x WINDOW)."""

    name = "sink,window"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        parts = str(value).split(",")
        try:
            sink, window = (int(part.strip()) for part in parts) if len(parts) == 2 else (None, None)
        except ValueError:
            sink = window = None
        if sink is None:
            self.fail(f"{value!r} is not SINK,WINDOW (two integers, e.g. 4,508)", param, ctx)
        problems = AttentionSink(sink, window).problems()
        if problems:
            self.fail(problems[0], param, ctx)
        return sink, window


@click.command()
@click.option("--model", "model", default=DEFAULT_MODEL, show_default=True,
              type=PresetOrFolder([*MODEL_PRESETS, GENERIC_MODEL]),
              help="model preset ('llama': shapes from the config), or a checkpoint folder such as a pruned model")
@click.option("--checkpoint", type=FilePath(path_type=Path), default=None,
              help="Meta folder (params.json), Hugging Face folder (config.json) or .gguf; omit for embedded weights")
@click.option("--recipe", type=Text(), default=None,
              help=f"recipe name or .toml path [default: the device's, else {DEFAULT_RECIPE}]")
@click.option("--target", default=None, type=click.Choice(list(TARGETS)),
              help=f"lowering target [default: the device's, else {DEFAULT_TARGET}]")
@click.option("--device", type=Text(), default=None,
              help="device preset: picks target, recipe and context (`llama-mobile devices`)")
@click.option("-o", "--output", "output_dir", type=FilePath(path_type=Path), default=Path("out"),
              show_default=True, help="folder the bundle is written into")
@click.option("--context", type=click.IntRange(2), default=None,
              help="context length baked into the program (preset default)")
@click.option("--name", type=PlainName(), default=None,
              help="bundle folder name inside -o (default MODEL-RECIPE-TARGET)")
@click.option("--no-validate", is_flag=True, help="skip the parity gate against the float model")
@click.option("--task", type=click.Choice(["chat", "guard"]), default=None,
              help="what the model does (default: the preset's; 'guard' for a Llama Guard derivative)")
@click.option("--skip-memory-check", is_flag=True, help="export even if the memory preflight says it will not fit")
@click.option("--format", "formats", multiple=True, type=click.Choice(["mlpackage"]),
              help="also write the Core ML model as a standalone model.mlpackage (Core ML targets)")
@click.option("--single-file", is_flag=True,
              help="keep all weights in model.pte (for iOS's TextLLMRunner, which cannot load model.ptd; "
                   "a tied embedding/output matrix is then stored twice)")
@click.option("--calibration", type=FilePath(path_type=Path), default=None,
              help="calibration text for a recipe with [calibration] (default: the shipped public-domain text)")
@click.option("--requantize", is_flag=True,
              help="dequantize a GGUF's Q4_0/Q8_0 weights and quantize them again with the recipe "
                   "(default: kept exactly as they are)")
@click.option("--kv-cache", type=click.Choice(KV_CACHES), default=None,
              help="KV cache: int8 is ExecuTorch's quantized cache and SDPA, a quarter of fp32's memory "
                   "(XNNPACK targets) [default: the recipe's, fp32]")
@click.option("--attention-sink", "attention_sink", type=SinkWindow(), default=None,
              help="SINK,WINDOW: a ring KV cache of SINK + 2 x WINDOW positions that keeps the first SINK tokens "
                   "and attends to them plus the last WINDOW, so a conversation never reaches the end of the "
                   "context (custom-kernel targets, fp32 cache); e.g. 4,508 (a cache of 1020). Sets the context")
@click.option("--adapter", "adapter_options", multiple=True, metavar="NAME=PATH",
              help="a LoRA adapter (PEFT folder: adapter_config.json + adapter_model.safetensors); repeatable. "
                   "Each becomes adapters/NAME.pte, a small program over the one base model.ptd, gated against "
                   "the float model with the adapter merged")
@click.option("--targets", "targets", default=None, metavar="A,B,...",
              help="one bundle with one variant per target (each with its own recipe, program and gate; the "
                   "tokenizer once); all-android / all-ios name every target the device registry has for them "
                   "(an NPU variant per SoC); a target whose SDK is missing here is listed as skipped")
@click.option("--strict", is_flag=True, help="with --targets: a target that cannot be exported here is an error")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON on stdout")
def export(model, checkpoint, recipe, target, device, output_dir, context, name, no_validate, task,
           skip_memory_check, formats, single_file, calibration, requantize, kv_cache, attention_sink, adapter_options,
           targets, strict, as_json):
    """Load, quantize and lower a model, and write a verified bundle.

    \b
    Examples:
      llama-mobile export
      llama-mobile export --model llama3.2-1b --checkpoint ~/Llama3.2-1B-Instruct --recipe 8da4w -o out/
      llama-mobile export --model llama3.2-1b --checkpoint ~/hf/Llama-3.2-1B-Instruct --recipe fp32
      llama-mobile export --model llama3.2-3b --checkpoint CKPT --device snapdragon-7-gen-3
      llama-mobile export --model llama3.2-1b --checkpoint CKPT --target coreml-ios18 --recipe coreml-int4 --format mlpackage
      llama-mobile export --model llama3.2-1b --checkpoint CKPT --context 8192 --kv-cache int8
      llama-mobile export --attention-sink 4,508
      llama-mobile export --model llama3.2-1b --checkpoint CKPT --adapter support=./support-lora --adapter sql=./sql-lora
      llama-mobile export --targets xnnpack,coreml-ios18,qnn-htp
      llama-mobile export --model llama3.2-1b --checkpoint CKPT --targets all-android,all-ios
    """
    quiet_libraries()
    from llama_mobile.core.progress import Progress
    from llama_mobile.export.adapters import parse_adapter_option
    from llama_mobile.jobs.export_job import STAGES, ExportRequest, run_export

    if model not in MODEL_PRESETS and model != GENERIC_MODEL:  # a folder: its config gives the shapes
        from llama_mobile.core.errors import UsageError

        if checkpoint is not None:
            raise UsageError("--model is a folder and --checkpoint is given", fix="pass the folder once")
        model, checkpoint = GENERIC_MODEL, Path(model)
    chosen = None
    if device:
        from llama_mobile.core.devices import get_device

        chosen = get_device(device)
    request = ExportRequest(model=model, checkpoint=checkpoint,
                            recipe=recipe or (target and TARGETS[target].options.recipe)
                            or (chosen.recipe if chosen else DEFAULT_RECIPE),
                            target=target or (chosen.target if chosen else DEFAULT_TARGET),
                            output_dir=output_dir,
                            context=context if context is not None or attention_sink else (
                                chosen.context if chosen else None),
                            validate=not no_validate, name=name, task=task, device=device,
                            memory_check=not skip_memory_check, formats=tuple(formats),
                            single_file=single_file, calibration=calibration, requantize=requantize,
                            recipe_explicit=recipe is not None, kv_cache=kv_cache, attention_sink=attention_sink,
                            adapters=tuple(parse_adapter_option(value) for value in adapter_options))
    if targets is not None or strict:
        from llama_mobile.core.errors import UsageError
        from llama_mobile.core.targets import parse_target_list
        from llama_mobile.jobs.multi_export import run_multi_export

        if targets is None:
            raise UsageError("--strict applies to --targets", fix="add --targets A,B or drop --strict")
        if target is not None or adapter_options:
            raise UsageError("--targets names every target; it takes neither --target nor --adapter",
                             fix="drop --target/--adapter")
        result = run_multi_export(request, parse_target_list(targets), strict, Progress(STAGES, emit=say),
                                  label=targets.replace(",", "-"))
    else:
        result = run_export(request, Progress(STAGES, emit=say))
    if as_json:
        click.echo(json.dumps({"bundle": str(result.bundle), "size_bytes": result.size_bytes,
                               "seconds": result.seconds, "peak_rss_bytes": result.peak_rss_bytes,
                               "parity": result.parity, "adapters": result.manifest.adapters or [],
                               "variants": result.manifest.variants or []}, indent=2))
        return
    click.echo(f"bundle: {result.bundle}")
    from llama_mobile.jobs.bench_job import model_bytes

    program = "model.pte + model.ptd" if result.manifest.runtime.weights else "model.pte"
    click.echo(f"size:   {result.size_bytes / 2**20:.1f} MiB ({program} {model_bytes(result.manifest) / 2**20:.1f} MiB)")
    click.echo(f"time:   {sum(result.seconds.values()):.0f}s, peak RSS {result.peak_rss_bytes / 2**30:.2f} GiB")
    if result.parity:
        from llama_mobile.runtime_harness.metrics import ParityMetrics
        from llama_mobile.runtime_harness.parity import GateResult

        gate = GateResult(metrics=ParityMetrics(**result.parity["metrics"]), thresholds=result.parity["thresholds"],
                          failures=result.parity["failures"], reference=result.parity["reference"])
        click.echo(gate.summary())
    for variant in result.manifest.variants or ():
        if variant["status"] != "ok":
            click.echo(f"variant {variant['target']}: skipped ({variant['reason']})")
            continue
        parity = variant["parity"]
        click.echo(f"variant {variant['target']}: {variant['program']} (+ {variant['weights'] or 'no weights file'}), "
                   f"{variant['size_bytes'] / 2**20:.1f} MiB, recipe {variant['recipe']}"
                   + (f", parity {'passed' if parity['passed'] else 'FAILED'}" if parity else ""))
    for adapter in result.manifest.adapters or ():
        size = result.manifest.files[adapter["program"]].size
        click.echo(f"adapter {adapter['name']}: {adapter['program']} {size / 2**20:.2f} MiB, rank {adapter['rank']}"
                   + (f", parity {'passed' if adapter['parity']['passed'] else 'FAILED'}" if adapter["parity"] else ""))
