"""export --targets A,B,C: one bundle holding one variant per target, the tokenizer once.

Each target is exported on its own (its recipe, lowering and parity gate, as `export --target` does) into a
scratch folder inside the output folder; the bundle then takes the first target's files at its top (so every
reader of a one-target bundle runs that variant) and every other target's program, weights and extra files
under variants/TARGET/. The manifest (schema version 2) lists every variant with what it needs of a device
(llama_mobile/core/variants.py chooses by it). A target whose SDK is missing here is listed as skipped with
its one-line reason; with ``strict`` it is an error.
"""
from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

from llama_mobile.core.architecture import Architecture
from llama_mobile.core.atomic import bundle_folder, staged_directory
from llama_mobile.core.bundle import verify_bundle
from llama_mobile.core.errors import ExportError, ParityFailure, UsageError
from llama_mobile.core.hashing import sha256_file
from llama_mobile.core.manifest import MANIFEST_NAME, Manifest
from llama_mobile.core.memory import peak_rss_bytes
from llama_mobile.core.progress import Progress
from llama_mobile.core.targets import TARGETS, VariantSpec, get_target
from llama_mobile.core.variants import min_ram_gb
from llama_mobile.export.backends import get_backend
from llama_mobile.export.bundle import write_manifest
from llama_mobile.jobs.export_job import ExportResult, run_export
from llama_mobile.jobs.export_request import ExportRequest, check_request
from llama_mobile.jobs.plan import kv_cache_bytes
from llama_mobile.quantize.recipe import DEFAULT_RECIPE

VARIANTS_DIR = "variants"
MULTI_SCHEMA_VERSION = 2


@dataclass
class Planned:
    spec: VariantSpec
    request: ExportRequest | None  # None: skipped
    reason: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name


def plan_variants(request: ExportRequest, specs: list[VariantSpec], scratch: Path, strict: bool) -> list[Planned]:
    """Each variant's own export request, checked before any weight is read; a missing SDK skips it."""
    planned = []
    for spec in specs:
        target = TARGETS[spec.target]
        recipe = request.recipe if request.recipe_explicit else (target.options.recipe or DEFAULT_RECIPE)
        sub = dataclasses.replace(request, target=spec.target, recipe=recipe, output_dir=scratch, name=spec.name,
                                  device=spec.device or request.device,
                                  single_file=spec.single_file or request.single_file)
        try:  # the SDK first: without it a target is skipped whatever else it would need
            get_backend(target).check_environment(target)
        except ExportError as exc:
            if strict:
                raise
            planned.append(Planned(spec, None, str(exc)))
            continue
        check_request(sub)
        planned.append(Planned(spec, sub))
    if not any(p.request for p in planned):
        raise UsageError("no target of --targets can be exported here: "
                         + "; ".join(f"{p.name}: {p.reason}" for p in planned), fix="add --targets xnnpack")
    return planned


def requirements(spec: VariantSpec, manifest: Manifest, runtime_bytes: int) -> dict:
    target = get_target(spec.target)
    backend = target.backend
    os_name = spec.os or ("ios" if backend == "coreml" else ("android" if backend in ("qnn", "neuropilot") else None))
    min_os = target.min_os.split()[-1] if target.min_os else None
    return {"os": os_name, "min_os": min_os, "npu_backend": backend if backend in ("qnn", "neuropilot") else None,
            "chip": manifest.target.options.get("chip") if backend in ("qnn", "neuropilot") else None,
            "isa": [], "min_ram_gb": min_ram_gb(runtime_bytes)}


def _variant_entry(spec: VariantSpec, result: ExportResult, folder: str) -> dict:
    manifest = result.manifest
    runtime = manifest.runtime
    prefix = f"{folder}/" if folder else ""
    model_bytes = manifest.files[runtime.program].size + (manifest.files[runtime.weights].size if runtime.weights else 0)
    arch = Architecture.from_dict(manifest.model.architecture)
    kv = kv_cache_bytes(arch, runtime.context_length, manifest.recipe.get("kv_cache", "fp32"))
    return {"target": spec.name, "backend": manifest.target.backend, "status": "ok", "reason": None,
            "recipe": manifest.recipe["name"], "requires": requirements(spec, manifest, model_bytes + kv),
            "program": prefix + runtime.program, "weights": prefix + runtime.weights if runtime.weights else None,
            "size_bytes": model_bytes, "context_length": runtime.context_length, "max_seq_len": runtime.max_seq_len,
            "files": [prefix + name for name in manifest.files if name != manifest.tokenizer.file],
            "parity": manifest.parity}


def run_multi_export(request: ExportRequest, specs: list[VariantSpec], strict: bool = False,
                     progress: Progress | None = None, label: str | None = None) -> ExportResult:
    """``label``: what the default bundle name ends with (the --targets value; default the variants' names)."""
    progress = progress or Progress(("variants",))
    preset = request.model
    final = bundle_folder(request.output_dir,
                          request.name or f"{preset}-{label or '-'.join(spec.name for spec in specs)}",
                          {"checkpoint": request.checkpoint})
    scratch = final.with_name(f".{final.name}.variants")
    shutil.rmtree(scratch, ignore_errors=True)  # ours: a hidden folder left by an interrupted run
    scratch.mkdir(parents=True)
    try:
        planned = plan_variants(request, specs, scratch, strict)
        results: dict[str, ExportResult] = {}
        for plan in planned:
            if plan.request is None:
                progress.note(f"{plan.name}: skipped ({plan.reason})")
                continue
            progress.note(f"== variant {plan.name} (recipe {plan.request.recipe})")
            try:
                results[plan.name] = run_export(plan.request, progress)
            except ParityFailure as failure:  # keep the rejected variant beside where the bundle would be
                rejected = final.with_name(f"{final.name}.{plan.name}.rejected")
                shutil.rmtree(rejected, ignore_errors=True)
                shutil.move(failure.path, rejected)
                raise ParityFailure(f"variant {plan.name}: {str(failure).split(' — ')[0].split(': ', 1)[-1]}",
                                    path=rejected, fix=failure.fix) from None
        return _assemble(final, planned, results)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _assemble(final: Path, planned: list[Planned], results: dict[str, ExportResult]) -> ExportResult:
    primary = next(p.name for p in planned if p.name in results)
    tokenizers = {sha256_file(r.bundle / r.manifest.tokenizer.file) for r in results.values()}
    if len(tokenizers) != 1:
        raise ExportError("internal error: the variants' tokenizers differ", fix="report this with the command line")
    variants = []
    with staged_directory(final) as staging:
        for plan in planned:
            if plan.name not in results:
                variants.append({"target": plan.name, "backend": get_target(plan.spec.target).backend,
                                 "status": "skipped", "reason": plan.reason, "program": None, "weights": None})
                continue
            result = results[plan.name]
            folder = "" if plan.name == primary else f"{VARIANTS_DIR}/{plan.name}"
            for name in result.manifest.files:
                if name == MANIFEST_NAME or (folder and name == result.manifest.tokenizer.file):
                    continue
                destination = staging / folder / name
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(result.bundle / name, destination)
            variants.append(_variant_entry(plan.spec, result, folder))
        base = results[primary]
        manifest = dataclasses.replace(base.manifest, variants=variants, schema_version=MULTI_SCHEMA_VERSION)
        manifest = write_manifest(staging, manifest)
    verify_bundle(final)
    seconds: dict[str, float] = {}
    for result in results.values():
        for stage, spent in result.seconds.items():
            seconds[stage] = seconds.get(stage, 0.0) + spent
    return dataclasses.replace(base, bundle=final, manifest=manifest, seconds=seconds, peak_rss_bytes=peak_rss_bytes())
