"""`llama-mobile prune`: structured pruning with an optional distillation recovery."""
from __future__ import annotations

import json
from pathlib import Path

import click

from llama_mobile.cli.common import FilePath, Finite, IntList, PlainName, Text, quiet_libraries, say
from llama_mobile.core.presets import GENERIC_MODEL, MODEL_PRESETS


@click.command()
@click.option("--model", default=GENERIC_MODEL, show_default=True, type=click.Choice([*MODEL_PRESETS, GENERIC_MODEL]),
              help="model preset ('llama': shapes from the checkpoint's config)")
@click.option("--checkpoint", type=FilePath(path_type=Path), default=None,
              help="Meta, Hugging Face or GGUF checkpoint; omit for a preset's embedded weights")
@click.option("-o", "--output", type=FilePath(path_type=Path), required=True,
              help="folder the pruned Hugging Face checkpoint is written to")
@click.option("--drop-blocks", type=click.IntRange(0), default=None, help="number of decoder blocks to remove")
@click.option("--drop-blocks-at", type=IntList(0), default=None, help="explicit block indices to remove, e.g. 3,7")
@click.option("--block-choice", type=click.Choice(["importance", "last"]), default="importance", show_default=True,
              help="which blocks --drop-blocks removes: least influence on calibration text, or the last ones")
@click.option("--mlp-hidden", type=IntList(1), default=None,
              help="MLP width: one number for every block, or one per remaining block (comma-separated)")
@click.option("--kv-heads", type=click.IntRange(1), default=None,
              help="KV heads to keep in every block (each drops its least important groups with their query heads)")
@click.option("--keep-output-tokens", type=Text(), default=None,
              help="prune the output layer to these tokens: 'guard', a comma list of ids/tokens, or a file")
@click.option("--calibration", type=FilePath(path_type=Path, exists=True, dir_okay=False), default=None,
              help="calibration text [default: the shipped alice.txt]")
@click.option("--eval-text", type=FilePath(path_type=Path, exists=True, dir_okay=False), default=None,
              help="evaluation text [default: windows held out from the calibration text]")
@click.option("--seq-len", type=click.IntRange(8), default=128, show_default=True, help="tokens per window")
@click.option("--calibration-windows", type=click.IntRange(1), default=16, show_default=True)
@click.option("--eval-windows", type=click.IntRange(1), default=4, show_default=True)
@click.option("--distill-steps", type=click.IntRange(0), default=0, show_default=True,
              help="logit-distillation steps after pruning (resumable: rerun the same command)")
@click.option("--teacher", type=FilePath(path_type=Path), default=None,
              help="teacher checkpoint for distillation [default: the unpruned model]")
@click.option("--lr", type=Finite(0.0, low_open=True), default=1e-4, show_default=True,
              help="distillation learning rate (AdamW)")
@click.option("--save-every", type=click.IntRange(1), default=25, show_default=True,
              help="save the distillation state every N steps")
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="dtype of the written weights")
@click.option("--name", type=PlainName(), default=None,
              help="model name recorded in the checkpoint, and its bundles' folder name (default: MODEL-pruned)")
@click.option("--task", type=click.Choice(["chat", "guard"]), default=None,
              help="what the model does (default: the preset's; 'guard' for a Llama Guard derivative)")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON on stdout")
def prune(model, checkpoint, output, drop_blocks, drop_blocks_at, block_choice, mlp_hidden, kv_heads,
          keep_output_tokens, calibration, eval_text, seq_len, calibration_windows, eval_windows, distill_steps,
          teacher, lr, save_every, dtype, name, task, as_json):
    """Remove blocks, MLP neurons, KV groups or output rows by measured importance; write a checkpoint.

    The result is a Hugging Face folder (config.json + model.safetensors + tokenizer) with its real
    shapes, a prune_report.json, and a history entry that exported bundles carry in their manifest.

    \b
    Examples:
      llama-mobile prune --model llama-guard-3-1b --checkpoint CKPT --drop-blocks 4 --mlp-hidden 6400 \\
          --keep-output-tokens guard --calibration data.txt -o pruned/
      llama-mobile prune --model smollm2-135m-instruct --drop-blocks 8 --distill-steps 100 --seq-len 64 -o smol-22/
      llama-mobile export --model llama --checkpoint pruned/ --recipe guard-int4
    """
    from llama_mobile.core.progress import Progress
    from llama_mobile.jobs.prune_job import STAGES, PruneRequest, run_prune

    quiet_libraries()
    request = PruneRequest(
        model=model, checkpoint=checkpoint, output=output, drop_blocks=drop_blocks or None,
        drop_blocks_at=drop_blocks_at, block_choice=block_choice, mlp_hidden=mlp_hidden, kv_heads=kv_heads,
        keep_output_tokens=keep_output_tokens, calibration=calibration, eval_text=eval_text, seq_len=seq_len,
        calibration_windows=calibration_windows, eval_windows=eval_windows, distill_steps=distill_steps,
        teacher=teacher, lr=lr, save_every=save_every, dtype=dtype, name=name, task=task)
    result = run_prune(request, Progress(STAGES, emit=say))
    report = result.report
    if as_json:
        click.echo(json.dumps({"checkpoint": str(result.output), **report}, indent=2))
        return
    q = report["quality"]
    click.echo(f"checkpoint: {result.output}")
    click.echo(f"shapes:     {report['before']['n_layers']} -> {report['after']['n_layers']} blocks, "
               f"{report['before']['parameters'] / 1e6:.1f}M -> {report['after']['parameters'] / 1e6:.1f}M parameters")
    for stage in ("unpruned", "pruned", "distilled"):
        if q.get(stage):
            click.echo(f"{stage + ':':11s} perplexity {q[stage]['perplexity']}, KL to original "
                       f"{q[stage]['kl_to_original']:.4f}, top-1 agreement {q[stage]['top1_agreement']:.3f}")
    click.echo(f"export:     llama-mobile export --model llama --checkpoint {result.output}")
