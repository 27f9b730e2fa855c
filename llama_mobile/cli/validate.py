"""`llama-mobile validate`: the parity gate CI jobs run on a bundle."""
from __future__ import annotations

import json
from pathlib import Path

import click

from llama_mobile.cli.common import FilePath, Finite, quiet_libraries, say
from llama_mobile.core.reports import ValidationReport


@click.command()
@click.argument("bundle", type=FilePath(path_type=Path))
@click.option("--reference", type=FilePath(path_type=Path), default=None,
              help="the float checkpoint the bundle was made from (omit for embedded weights)")
@click.option("--text", type=FilePath(path_type=Path, exists=True, dir_okay=False), default=None,
              help="evaluation text (default: the shipped public-domain corpus)")
@click.option("--prompts", type=FilePath(path_type=Path, exists=True, dir_okay=False), default=None,
              help='JSONL of {"prompt": ...} for the greedy-generation check')
@click.option("--guard-prompts", type=FilePath(path_type=Path, exists=True, dir_okay=False), default=None,
              help='Guard bundles: JSONL of {"user": ..., "assistant": ...} (default: the shipped set)')
@click.option("--positions", default=256, show_default=True, type=click.IntRange(8))
@click.option("--gate-on", default="fp32", show_default=True, type=click.Choice(["fp32", "bf16"]),
              help="which eager reference the thresholds apply to (both are reported)")
@click.option("--min-top1", type=Finite(0.0, 1.0), default=None, help="override the recipe's threshold")
@click.option("--min-cosine", type=Finite(-1.0, 1.0), default=None)
@click.option("--max-ppl-ratio", type=Finite(0.0, low_open=True), default=None)
@click.option("--max-kl-mean", type=Finite(0.0), default=None)
@click.option("--variant", default=None, metavar="TARGET",
              help="validate the bundle's variant for TARGET (export --targets) instead of its top-level program")
@click.option("--json", "as_json", is_flag=True, help="the full report on stdout")
def validate(bundle, reference, text, prompts, guard_prompts, positions, gate_on, min_top1, min_cosine,
             max_ppl_ratio, max_kl_mean, variant, as_json):
    """Gate a bundle on its distance from the float model: exit 0 pass, 10 fail.

    Runs the bundle's program with the ExecuTorch runtime and the reference checkpoint eagerly in
    FP32 and BF16 on the same tokens; reports top-1/top-5 agreement, logits cosine, KL (mean, p99),
    perplexities and their ratio, and greedy-generation match lengths.

    \b
    Examples:
      llama-mobile validate out/smollm2-135m-instruct-8da4w-mixed-gptq-xnnpack
      llama-mobile validate out/llama3.2-1b-8da4w-xnnpack --reference ~/Llama3.2-1B-Instruct --json > parity.json
      llama-mobile validate out/smollm2-135m-instruct-xnnpack-coreml-ios18 --variant coreml-ios18   # on a Mac
    """
    quiet_libraries()
    from llama_mobile.core.errors import ParityFailure
    from llama_mobile.core.progress import Progress
    from llama_mobile.jobs.validate_job import STAGES, ValidationRequest, run_validation

    overrides = {k: v for k, v in (("min_top1", min_top1), ("min_cosine", min_cosine),
                                   ("max_ppl_ratio", max_ppl_ratio), ("max_kl_mean", max_kl_mean)) if v is not None}
    request = ValidationRequest(bundle=bundle, reference=reference, positions=positions, text=text,
                                prompts=prompts, gate_on=gate_on, thresholds=overrides,
                                guard_prompts=guard_prompts, variant=variant)
    report = run_validation(request, Progress(STAGES, emit=say))
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_validation(report)
    if not report.passed:
        raise ParityFailure("; ".join(report.failures), path=bundle, fix="use a milder recipe or relax a threshold")


def _print_validation(report: ValidationReport) -> None:
    rows = [("metric", *report.references)]
    names = ("top1_agreement", "top5_overlap", "cosine_mean", "kl_mean", "kl_p99", "ppl_reference",
             "ppl_candidate", "ppl_ratio")
    for name in names:
        rows.append((name, *(f"{r['metrics'][name]:.4f}" for r in report.references.values())))
    for row in rows:
        click.echo(f"{row[0]:16s}" + "".join(f"{cell:>14s}" for cell in row[1:]))
    if report.guard is not None:
        g = report.guard
        click.echo(f"guard verdict agreement {g.verdict_agreement:.0%}, categories {g.category_agreement:.0%} "
                   f"over {g.conversations} conversations")
    g = report.generation
    click.echo(f"greedy match: mean {g.mean_match:.1f}/{g.tokens} tokens over {g.prompts} prompts "
               f"({g.exact} identical)")
    click.echo(f"gate vs {report.gate_on}: {'PASS' if report.passed else 'FAIL'}"
               + "".join(f"\n  {f}" for f in report.failures))
