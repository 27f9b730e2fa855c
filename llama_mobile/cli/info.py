"""Commands that read the registries and bundles: models, recipes, devices, targets, plan, verify."""
from __future__ import annotations

import json
from pathlib import Path

import click

from llama_mobile.cli.common import FilePath, Text
from llama_mobile.core.presets import DEFAULT_MODEL, GENERIC_MODEL, MODEL_PRESETS
from llama_mobile.core.targets import TARGETS
from llama_mobile.quantize.recipe import DEFAULT_RECIPE


@click.command()
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


@click.group(invoke_without_command=True)
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
    from llama_mobile.quantize.recipe import load_recipe, shipped_recipes

    loaded = {name: load_recipe(name) for name in shipped_recipes()}
    if as_json:
        click.echo(json.dumps({n: r.to_dict() for n, r in loaded.items()}, indent=2))
        return
    for name, recipe in loaded.items():
        click.echo(f"{name:22s} {recipe.summary}")


@recipes.command("show")
@click.argument("name", type=Text())
def recipes_show(name):
    """Print a recipe's TOML.

    \b
    Example:
      llama-mobile recipes show 8da4w
    """
    from llama_mobile.quantize.recipe import load_recipe, shipped_recipes

    load_recipe(name)  # validates; raises a one-line error for an unknown name
    path = shipped_recipes().get(name) or Path(name)
    click.echo(path.read_text(), nl=False)


@click.command()
@click.option("--json", "as_json", is_flag=True)
def devices(as_json):
    """List the device presets: cores, ISA features, RAM, bandwidth, NPU, and the defaults they pick.

    \b
    Example:
      llama-mobile devices
      llama-mobile export --device snapdragon-8-gen-3 --model llama3.2-1b --checkpoint CKPT
    """
    from llama_mobile.core.devices import DEVICES

    if as_json:
        click.echo(json.dumps({n: d.to_dict() for n, d in DEVICES.items()}, indent=2))
        return
    for name, d in DEVICES.items():
        npu = d.npu.name if d.npu else "-"
        click.echo(f"{name:20s} {'+'.join(str(c.count) for c in (d.big, d.mid, d.little))} cores, "
                   f"{','.join(d.isa) or '-':18s} {d.ram_gb:2d} GB {d.bandwidth_gbs:5.1f} GB/s  NPU {npu:22s} "
                   f"-> {d.target}/{d.recipe}, {d.threads} threads, context {d.context}")


@click.command()
@click.option("--model", default=DEFAULT_MODEL, show_default=True, type=click.Choice(list(MODEL_PRESETS)))
@click.option("--recipe", type=Text(), default=None, help="recipe name or .toml (default: the device's, else 8da4w)")
@click.option("--device", type=Text(), default=None, help="device preset (see `llama-mobile devices`)")
@click.option("--context", type=click.IntRange(2), default=None,
              help="context length (default: the device's or the model's)")
@click.option("--targets", default=None, metavar="A,B,...",
              help="price a bundle of one variant per target (export --targets): each target's default recipe "
                   "unless --recipe, and the sum")
@click.option("--json", "as_json", is_flag=True)
def plan(model, recipe, device, context, targets, as_json):
    """Predict .pte size, runtime memory and (with --device) fit and a decode-speed ceiling, from the
    architecture alone: no weights needed.

    \b
    Examples:
      llama-mobile plan --model llama3.2-1b --recipe llama3.2-quantized
      llama-mobile plan --model llama3.2-3b --device snapdragon-7-gen-3
      llama-mobile plan --model llama3.2-1b --targets xnnpack,coreml-ios18,qnn-htp
    """
    from llama_mobile.core.devices import get_device
    from llama_mobile.core.presets import get_model_preset
    from llama_mobile.jobs.plan import plan as make_plan
    from llama_mobile.quantize.recipe import load_recipe

    preset = get_model_preset(model)
    chosen = get_device(device) if device else None
    recipe_obj = load_recipe(recipe or (chosen.recipe if chosen else DEFAULT_RECIPE))
    if context is None and chosen is None:
        context = preset.default_context
    if targets is not None:
        return _plan_targets(preset, targets, recipe, context, chosen, as_json)
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


def _plan_targets(preset, targets: str, recipe: str | None, context: int | None, device, as_json: bool) -> None:
    """The predicted bytes of every variant of an `export --targets` bundle, and their sum."""
    from llama_mobile.core.targets import TARGETS, parse_target_list
    from llama_mobile.jobs.plan import plan as make_plan
    from llama_mobile.quantize.recipe import load_recipe

    plans = {}
    for spec in parse_target_list(targets):
        chosen_recipe = load_recipe(recipe or TARGETS[spec.target].options.recipe or DEFAULT_RECIPE)
        plans[spec.name] = (chosen_recipe.name, make_plan(preset.architecture, chosen_recipe, context=context,
                                                          device=device))
    total = sum(p.size.total for _, p in plans.values())
    if as_json:
        click.echo(json.dumps({"targets": {name: {"recipe": r, **p.to_dict()} for name, (r, p) in plans.items()},
                               "total_bytes": total}, indent=2))
        return
    for name, (recipe_name, result) in plans.items():
        click.echo(f"  {name:22s} {recipe_name:22s} {result.size.total / 2**20:10.1f} MiB  "
                   f"(runtime memory {result.memory.total / 2**20:.0f} MiB at context {result.context})")
        for note in result.notes:
            click.echo(f"    note: {note}")
    click.echo(f"  {'predicted bundle':45s} {total / 2**20:10.1f} MiB  (programs and weights; the tokenizer once on top)")


@click.command()
@click.option("--json", "as_json", is_flag=True)
def targets(as_json):
    """List lowering targets.

    \b
    Example:
      llama-mobile targets
    """
    from llama_mobile.export.backends import sdk_problem

    problems = {name: sdk_problem(target) for name, target in TARGETS.items()}
    if as_json:
        click.echo(json.dumps({n: {**t.__dict__, "options": t.options.to_dict(), "sdk_available": problems[n] is None,
                                   "sdk_problem": problems[n]}
                               for n, t in TARGETS.items()}, indent=2))
        return
    for name, target in TARGETS.items():
        flags = "".join(f" [{flag}]" for flag in ("experimental" if target.experimental else "",
                                                  "SDK missing" if problems[name] else "") if flag)
        click.echo(f"{name:22s} {target.summary}{flags}")



@click.command()
@click.argument("bundle", type=FilePath(path_type=Path))
@click.option("--device", default=None, metavar="PRESET",
              help="also say which variant a device preset runs (bundles from export --targets)")
@click.option("--json", "as_json", is_flag=True)
def verify(bundle, device, as_json):
    """Check every file of a bundle against its manifest (SHA-256) and the manifest against its schema.

    \b
    Example:
      llama-mobile verify out/smollm2-135m-instruct-8da4w-mixed-gptq-xnnpack
      llama-mobile verify out/smollm2-135m-instruct-xnnpack-coreml-ios18 --device apple-a17-pro
    """
    import dataclasses

    from llama_mobile.core.bundle import verify_bundle

    manifest = verify_bundle(bundle).manifest
    choice = None
    if device is not None:
        from llama_mobile.core.devices import get_device
        from llama_mobile.core.variants import choose_variant, describe_device

        preset = get_device(device)
        if not manifest.variants:
            from llama_mobile.core.errors import UsageError

            raise UsageError("--device chooses among a bundle's variants; this bundle has one target",
                             path=bundle, fix="export with --targets A,B, or drop --device")
        choice = choose_variant(manifest.variants, describe_device(preset))
    if as_json:
        files = {name: dataclasses.asdict(entry) for name, entry in manifest.files.items()}
        adapters = [a["name"] for a in manifest.adapters or ()]
        variants = [{k: v[k] for k in ("target", "status", "reason", "program", "weights")}
                    for v in manifest.variants or ()]
        click.echo(json.dumps({"bundle": str(bundle), "ok": True, "files": files, "adapters": adapters,
                               "variants": variants,
                               **({"device": device, "chosen": choice.target, "reasons": choice.reasons}
                                  if choice else {})}, indent=2))
    else:
        click.echo(f"ok: {len(manifest.files)} files match manifest.json (schema {manifest.schema_version})")
        for variant in manifest.variants or ():
            state = variant["program"] if variant["status"] == "ok" else f"skipped: {variant['reason']}"
            click.echo(f"variant {variant['target']}: {state}")
        if choice is not None:
            click.echo(f"{device} runs: {choice.target or 'none of them'}")
            for target, reason in choice.reasons.items():
                click.echo(f"  not {target}: {reason}")
        for adapter in manifest.adapters or ():
            parity = adapter.get("parity")
            click.echo(f"adapter {adapter['name']}: {adapter['program']}, rank {adapter['rank']}, "
                       f"{', '.join(adapter['targets'])}"
                       + (f"; parity {'passed' if parity['passed'] else 'failed'}" if parity else ""))
