"""What an export is asked for, and everything that can be judged before a single weight is read: the
recipe, target, backend and options checked together, so a bad request stops with one line and no work.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from llama_mobile.core.architecture import Architecture
from llama_mobile.core.atomic import bundle_folder, check_writable
from llama_mobile.core.devices import get_device
from llama_mobile.core.errors import UsageError
from llama_mobile.core.manifest import AttentionSink, Manifest
from llama_mobile.core.presets import GENERIC_MODEL, get_model_preset
from llama_mobile.core.targets import TARGETS, Target, get_target
from llama_mobile.export.backends import bind_device, get_backend
from llama_mobile.export.backends.base import Backend
from llama_mobile.export.config_fields import read_user_text
from llama_mobile.jobs.plan import Plan, plan
from llama_mobile.quantize.prequantized import AS_PUBLISHED, placeholder_recipe
from llama_mobile.quantize.recipe import Recipe, check_recipe_fits, load_recipe


@dataclass
class ExportRequest:
    model: str
    checkpoint: Path | None
    recipe: str
    target: str
    output_dir: Path
    context: int | None = None
    validate: bool = True
    positions: int = 128
    name: str | None = None
    task: str | None = None  # "guard" marks a generic Llama checkpoint as a Llama Guard classifier
    device: str | None = None  # a device preset: its RAM decides whether the context fits
    memory_check: bool = True
    formats: tuple[str, ...] = ()  # extra artifacts: "mlpackage" (Core ML targets) writes model.mlpackage
    # Keep every weight inside model.pte (no model.ptd): ExecuTorch's iOS TextLLMRunner takes no data
    # file. A tied embedding/output matrix is then stored twice. Apple --device presets imply it.
    single_file: bool = False
    # Calibration text for a recipe with [calibration] (default: runtime_harness/corpus/calibration.txt).
    calibration: Path | None = None
    # A checkpoint whose weights come quantized (GGUF Q4_0/Q8_0) keeps them as they are unless this is set:
    # then they are dequantized and the recipe quantizes them again (two roundings).
    requantize: bool = False
    # Whether `recipe` was asked for (False: the CLI's default). An asked-for recipe other than
    # "as-published" on a checkpoint whose quantization is kept is refused (it would requantize).
    recipe_explicit: bool = True
    kv_cache: str | None = None  # "fp32" or "int8" instead of the recipe's kv_cache
    # (sink_size, window): a ring KV cache with attention sinks (export/model.py CachePositionsWithSink) of
    # sink + 2 x window positions, which the program runs past; the context is then that cache.
    attention_sink: tuple[int, int] | None = None
    # LoRA adapters (name, PEFT folder): one small program each over the shared base weights file
    adapters: tuple[tuple[str, Path], ...] = ()

    @property
    def sink(self) -> AttentionSink | None:
        return AttentionSink(*self.attention_sink) if self.attention_sink is not None else None


@dataclass
class ExportResult:
    bundle: Path
    manifest: Manifest
    parity: dict | None
    seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_bytes: int = 0

    @property
    def size_bytes(self) -> int:
        return self.manifest.size_bytes


def check_request(request: ExportRequest):
    """Everything that can be judged before a single weight is read."""

    preset = None if request.model == GENERIC_MODEL else get_model_preset(request.model)
    if preset is None and request.checkpoint is None:
        raise UsageError("--model llama needs --checkpoint", fix="pass --checkpoint PATH")
    recipe = with_kv_cache(placeholder_recipe() if request.recipe == AS_PUBLISHED else load_recipe(request.recipe),
                           request)
    target = get_target(request.target)

    target = bind_device(target, request.device)  # an NPU target takes its SoC from the device preset
    if target.backend not in recipe.targets:
        raise UsageError(f"recipe {recipe.name!r} is for {', '.join(recipe.targets)}, not {target.backend}",
                         fix="pick a recipe listed for this target (`llama-mobile recipes`)")
    backend = get_backend(target)
    if backend.quantizes_whole_graph and recipe.pt2e is None:
        raise UsageError(f"target {target.name} runs graphs quantized by its own quantizer; recipe "
                         f"{recipe.name!r} has no [pt2e] section", fix="use a [pt2e] recipe such as "
                         f"{target.backend}-16a4w (`llama-mobile recipes`)")
    unsupported = sorted({q.scheme for q in (recipe.linear, recipe.output, *(o.quant for o in recipe.overrides))}
                         - set(target.linear_schemes))
    if recipe.embedding.scheme not in target.embedding_schemes:
        unsupported.append(f"embedding {recipe.embedding.scheme}")
    if unsupported:
        raise UsageError(f"target {target.name} cannot run {', '.join(unsupported)} as delegated kernels",
                         fix=f"use schemes {', '.join(target.linear_schemes)} for {target.name}"
                             + _other_targets_hint(recipe, target))
    if recipe.kv_cache == "int8" and backend.model_options.get("attention_kernel", "custom") != "custom":
        raise UsageError(f"target {target.name} runs standard attention ops; an int8 KV cache needs ExecuTorch's "
                         "custom quantized SDPA", fix="use --target xnnpack, or drop kv_cache = \"int8\"")
    if request.attention_sink is not None:
        check_attention_sink(request, recipe, target, backend)
    if request.adapters:
        check_adapters(request, recipe, target, backend)
    if recipe.kv_cache == "int8" and recipe.dtype != "fp32":
        raise UsageError(f"an int8 KV cache is attended in float32; recipe {recipe.name!r} computes in {recipe.dtype}",
                         fix="use an fp32 recipe with --kv-cache int8")
    dtypes = target.options.dtypes
    if recipe.dtype not in dtypes:
        raise UsageError(f"target {target.name} computes in {'/'.join(dtypes)}, recipe {recipe.name!r} in "
                         f"{recipe.dtype}", fix=f"use a recipe with dtype = {dtypes[0]!r} (`llama-mobile recipes`)")
    for extra in request.formats:
        if extra not in backend.formats:
            able = [t.name for t in TARGETS.values() if extra in get_backend(t).formats]
            raise UsageError(f"--format {extra} needs a target that writes it, not {target.name}",
                             fix=f"add --target {able[0] if able else 'xnnpack'} (`llama-mobile targets`)")
    if preset is not None:
        check_recipe_fits(recipe, linear_widths(preset.architecture), preset.architecture.dim)

    if request.calibration is not None:
        if recipe.calibration is None:
            raise UsageError(f"--calibration needs a recipe with a [calibration] section; {recipe.name!r} has none",
                             fix="use --recipe 8da4w-mixed-gptq (or add [calibration] to the recipe)")
        read_user_text(request.calibration, what="calibration text")  # unreadable: stop before loading
    backend.check_environment(target)  # a missing SDK stops here, before any weight is read
    check_writable(request.output_dir)
    if request.name is not None:  # now, not after the lowering; a default name is known once loaded
        bundle_folder(request.output_dir, request.name, {"checkpoint": request.checkpoint})
    return preset, recipe, target


def check_adapters(request: ExportRequest, recipe: Recipe, target: Target, backend: Backend) -> None:
    """What an export with LoRA adapters needs, before any weight is read: a target whose programs read a
    shared weights file, unrotated weights, distinct names and readable adapter folders."""
    names = [name for name, _ in request.adapters]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UsageError(f"--adapter {repeated[0]} is given twice", fix="give every adapter its own name")
    if not backend.external_weights or request.single_file:
        why = "--single-file" if request.single_file else f"target {target.name}"
        raise UsageError(f"{why} keeps the weights inside each program; adapters share one base weights file",
                         fix="export adapters with --target xnnpack and without --single-file")
    if recipe.rotation is not None or recipe.pt2e is not None:
        raise UsageError(f"recipe {recipe.name!r} rewrites the base weights (rotation or a whole-graph quantizer), "
                         "which an adapter trained on the original weights does not fit",
                         fix="use a recipe without [rotation]/[pt2e], e.g. the default 8da4w-mixed-gptq")
    for name, path in request.adapters:
        if not Path(path).exists():
            raise UsageError(f"adapter {name}: not found", path=path,
                             fix="pass NAME=FOLDER with the folder PEFT wrote (adapter_config.json and "
                                 "adapter_model.safetensors)")


def check_attention_sink(request: ExportRequest, recipe: Recipe, target: Target, backend: Backend) -> None:
    sink = request.sink
    problems = sink.problems()
    if problems:
        raise UsageError(f"--attention-sink {sink.sink_size},{sink.window_size}: {problems[0]}",
                         fix=f"give SINK,WINDOW with SINK >= 1 and WINDOW >= {AttentionSink.MIN_WINDOW}, e.g. 4,508")
    if backend.model_options.get("attention_kernel", "custom") != "custom":
        raise UsageError(f"target {target.name} runs standard attention ops; an attention sink needs ExecuTorch's "
                         "custom SDPA with a mask", fix="use --target xnnpack")
    if recipe.kv_cache == "int8" or recipe.dtype != "fp32":
        raise UsageError(f"an attention sink needs a float32 KV cache and graph; recipe {recipe.name!r} has "
                         f"{recipe.kv_cache} cache, {recipe.dtype}", fix="drop --kv-cache int8, or use an fp32 recipe")
    if request.context is not None and request.context != sink.cache_size:
        raise UsageError(f"--context {request.context} and --attention-sink {sink.sink_size},{sink.window_size} "
                         f"disagree: the sink's cache is {sink.cache_size} positions (sink + 2 x window)",
                         fix="drop --context")


def with_kv_cache(recipe: Recipe, request: ExportRequest) -> Recipe:
    """The recipe with ``export --kv-cache`` applied (the manifest then records what the program has)."""
    return recipe if request.kv_cache is None else dataclasses.replace(recipe, kv_cache=request.kv_cache)


def _other_targets_hint(recipe, target) -> str:
    """Name the targets of the same backend that can run the recipe (e.g. int4 on iOS 18, not 17)."""

    schemes = {q.scheme for q in (recipe.linear, recipe.output, *(o.quant for o in recipe.overrides))}
    able = [t.name for t in TARGETS.values() if t.backend == target.backend and t is not target
            and schemes <= set(t.linear_schemes) and recipe.embedding.scheme in t.embedding_schemes]
    return f", or use --target {able[0]}" if able else ""


def device_plan(request: ExportRequest, arch: Architecture, recipe: Recipe, context: int) -> Plan | None:
    """With --device: the context the device's RAM holds (shrunk or refused with the reason)."""
    if not request.device:
        return None

    return plan(arch, recipe, context=context, device=get_device(request.device))


def linear_widths(arch) -> dict[str, int]:
    return {name: in_features for name, (_, in_features) in arch.linear_shapes().items()}


def asked_context(request: ExportRequest, default: int) -> int:
    """--context (0 included: it is refused, not replaced), or the attention sink's cache (sink + 2 x window),
    which is the program's context; else ``default``."""
    asked = request.sink.cache_size if request.sink is not None else request.context
    return default if asked is None else asked
